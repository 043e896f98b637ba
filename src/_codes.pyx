"""The kernels' integer codes as Python IntEnums: ``Loss``, ``Solver``, ``Schedule``,
``Target`` and ``Activation``, declared once in ``cgd/_codes.pxd`` (which the kernels
cimport): compiling this module is what gives Python the values the kernels are
compiled with. Beside them, the maps from scikit-learn's parameter strings to codes that
the estimators and the tests use."""

# scikit-learn's parameter strings, mapped onto the codes.
LOSS_CODES = {
    "squared_error": Loss.LOSS_SQUARED_ERROR,
    "huber": Loss.LOSS_HUBER,
    "epsilon_insensitive": Loss.LOSS_EPSILON_INSENSITIVE,
    "squared_epsilon_insensitive": Loss.LOSS_SQUARED_EPSILON_INSENSITIVE,
    "hinge": Loss.LOSS_HINGE,
    "perceptron": Loss.LOSS_PERCEPTRON,
    "squared_hinge": Loss.LOSS_SQUARED_HINGE,
    "log_loss": Loss.LOSS_LOG,
    "modified_huber": Loss.LOSS_MODIFIED_HUBER,
}
SOLVER_CODES = {"sgd": Solver.SOLVER_SGD, "adam": Solver.SOLVER_ADAM,
                "adagrad": Solver.SOLVER_ADAGRAD}
SCHEDULE_CODES = {"constant": Schedule.SCHEDULE_CONSTANT,
                  "optimal": Schedule.SCHEDULE_OPTIMAL,
                  "invscaling": Schedule.SCHEDULE_INVSCALING,
                  "adaptive": Schedule.SCHEDULE_ADAPTIVE}
HIDDEN_ACTIVATION_CODES = {"identity": Activation.ACT_IDENTITY,
                           "logistic": Activation.ACT_LOGISTIC,
                           "tanh": Activation.ACT_TANH, "relu": Activation.ACT_RELU}
OUT_ACTIVATION_CODES = {"identity": Activation.ACT_IDENTITY,
                        "logistic": Activation.ACT_LOGISTIC,
                        "softmax": Activation.ACT_SOFTMAX, "exp": Activation.ACT_EXP}
