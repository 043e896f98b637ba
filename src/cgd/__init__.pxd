# Cython looks up the declarations of the module cgd._codes (src/_codes.pyx) as
# cgd/_codes.pxd under the include path (src/): this folder is that package for Cython
# only; nothing here is compiled on its own.
