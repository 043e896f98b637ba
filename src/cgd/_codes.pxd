# The integer codes the kernels branch on: losses, solvers, schedules, targets and
# activations. This file is their one source. The kernels cimport them as C enum
# constants (a switch on an int per batch, never a virtual call per sample); the Python
# side reads the same values from ``cgd._codes`` (src/_codes.pyx, which Cython pairs with
# this file by the module's dotted name), where each enum is an IntEnum, and maps
# scikit-learn's parameter strings onto them. A value is never written down twice.

cpdef enum Loss:
    LOSS_SQUARED_ERROR = 0
    LOSS_HUBER = 1
    LOSS_EPSILON_INSENSITIVE = 2
    LOSS_SQUARED_EPSILON_INSENSITIVE = 3
    LOSS_HINGE = 4
    LOSS_PERCEPTRON = 5
    LOSS_SQUARED_HINGE = 6
    LOSS_LOG = 7
    LOSS_MODIFIED_HUBER = 8
    LOSS_MULTINOMIAL = 9

cpdef enum Solver:
    SOLVER_SGD = 0
    SOLVER_ADAM = 1
    SOLVER_ADAGRAD = 2

cpdef enum Schedule:
    SCHEDULE_CONSTANT = 1
    SCHEDULE_OPTIMAL = 2
    SCHEDULE_INVSCALING = 3
    SCHEDULE_ADAPTIVE = 4

# What a linear model's outputs are: one regression target, one-vs-rest binary
# problems (output k is the class with index k + class_offset), or one softmax.
cpdef enum Target:
    TARGET_REGRESSION = 0
    TARGET_OVR = 1
    TARGET_MULTINOMIAL = 2

# MLP activations; SOFTMAX and EXP (the poisson loss's log link) only at the output.
cpdef enum Activation:
    ACT_IDENTITY = 0
    ACT_LOGISTIC = 1
    ACT_TANH = 2
    ACT_RELU = 3
    ACT_SOFTMAX = 4
    ACT_EXP = 5
