/* MKL decides "is this an Intel processor?" by calling this function. On any other vendor it
 * refuses the conditional-numerical-reproducibility branch asked for (MKL_CBWR=AVX2,STRICT) and
 * runs its AUTO branch, whose kernels, blocking and reduction order are other ones: the same
 * training stage then ends in other numbers (pipeline/core/numerics.py, docs/reproducibility.md).
 * Loaded before torch (RTLD_GLOBAL), this definition takes the place of MKL's own, so MKL chooses
 * its branch by the instruction set the processor reports (AVX2 and FMA), as on Intel. */
int mkl_serv_intel_cpu_true(void) { return 1; }
