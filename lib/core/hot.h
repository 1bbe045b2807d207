// hot.h: MOE_HOT, for the hot row loops of the elementwise code. The build has
// no -march flag, so the compiler targets SSE2; MOE_HOT adds an AVX2 clone that
// the loader picks on CPUs that have AVX2 (GCC's target_clones, an ifunc).
// The values are the same bits on both: AVX2 without the "fma" target never
// contracts a * b + c, and a function marked MOE_HOT keeps its reductions in
// explicit lanes (a fixed number of partial sums joined in a fixed tree), so
// a wider vector changes how many lanes one instruction carries, not the
// order of any sum. Keep both rules in every function marked with it.
#ifndef MOE_HOT_H
#define MOE_HOT_H

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define MOE_HOT __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef MOE_HOT
#define MOE_HOT
#endif

#endif
