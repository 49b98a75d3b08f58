/* Shared by the kernel sources: value dtype codes, limits, and the variant entry point. */
#ifndef DUOGPT_COMMON_H
#define DUOGPT_COMMON_H
#include <stdint.h>

enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };
#define MAX_BATCH 16
#define BLOCK_WORDS 4 /* the base path works on blocks of at most 256 rows of a tile */

/* Kernel variants for one decode row (batch 1), chosen per CPU and shape by kernels/tune.py:
 *   0  register tiles (<= 256 rows), one expand per 16 rows (the original path)
 *   1  register tiles (<= 256 rows), bfloat16: one 16-bit expand per 32 rows
 *   2  strips (any tile height), sums in a per-thread buffer; bfloat16: one 16-bit expand per
 *      32 rows; float32: 16 rows per expand of 16-bit pairs
 *   3  strips, one 32-bit expand per 16 rows (float32 and bfloat16)
 *   4  AVX2: tiles of 64 rows, sums in registers, one byte shuffle per 8 rows (avx2.c)
 *   5  AVX2: strips, sums in a per-thread buffer, two columns per pass (avx2.c)
 * Flags: VARIANT_NO_DP multiplies bfloat16 by shift + FMA even where vdpbf16ps exists;
 * VARIANT_NO_PF issues no software prefetch (the hardware prefetchers alone); VARIANT_PF_HEAD
 * prefetches only the first lines of a strip's coming columns (default: their whole segments). */
#define VARIANT_NO_DP 16
#define VARIANT_NO_PF 32
#define VARIANT_PF_HEAD 64
#define VARIANT_BATCH_BASE 128 /* batches of 2..16 rows take the original path (sums in memory) */
#define VARIANT_COUNT 6

/* Prefetch column j's bitmap words and all its values (a strip's coming column). */
static inline void prefetch_segment(const uint64_t *bitmaps, const char *values, int64_t esize,
                                    const int64_t *offsets, int64_t j, int64_t words) {
    const char *b = (const char *)(bitmaps + j * words), *v = values + offsets[j] * esize;
    const char *v_end = values + offsets[j + 1] * esize;
    for (int64_t c = 0; c < words * 8; c += 64) __builtin_prefetch(b + c, 0, 3);
    for (; v < v_end; v += 64) __builtin_prefetch(v, 0, 3);
}

/* One tile of one row (variants 1-3). ``acc`` holds the tile's rows (tile_rows floats, 64-byte
 * aligned, any contents); the product is written to out[0:count]. ``dp`` says the active x are
 * exact in bfloat16. Returns 0 when handled, -1 when the variant does not apply here. */
int duogpt_variant_tile(int variant, const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets,
                        int64_t words, const int32_t *active, int64_t n_active, const float *x, int dp, float *acc,
                        float *out, int64_t count);

/* Variants 4 and 5 (avx2.c): same contract, ``v`` without flags, ``pf`` 0 (no software prefetch) or 1. */
int duogpt_avx2_tile(int v, int pf, const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets,
                     int64_t words, const int32_t *active, int64_t n_active, const float *x, float *acc, float *out,
                     int64_t count);
int duogpt_avx2_variants(void);
/* Batches of 2..16 rows (avx2.c): one tile into rows row0.. of y (y points at row0); cursor holds n_active
 * positions. Columns in groups that fit in L2, one pass per 16 rows and up to 6 batch rows with the sums
 * in registers. Returns 0, or -1 where not compiled. */
int duogpt_avx2_batch(const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets, int64_t k,
                      int64_t words, const int32_t *active, int64_t n_active, const float *x, int64_t batch,
                      int64_t *cursor, float *y, int64_t n, int64_t count);
#endif
