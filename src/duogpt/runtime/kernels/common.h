/* Shared by the kernel sources: value dtype codes, limits, and the variant entry point. */
#ifndef DUOGPT_COMMON_H
#define DUOGPT_COMMON_H
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

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
 * prefetches only the first lines of a strip's coming columns (default: their whole segments).
 * The batch flags pick the path of batches of 2..16 rows per range of rows: the base path, or one of AVX2's
 * (avx2.c: sums of every row in registers, or panels expanded once into L1); kernels/tune.py times them per CPU
 * and shape and sets them. With no batch flag, the build's default (spmspv.c batch_path). */
#define VARIANT_NO_DP 16
#define VARIANT_NO_PF 32
#define VARIANT_PF_HEAD 64
#define VARIANT_BATCH_BASE 128  /* batches take the base path (sums in memory) unless a flag below says otherwise */
#define VARIANT_FEW_REGS 256    /* batches of 2..AVX2_FEW_ROWS rows: AVX2, sums in registers (where built) */
#define VARIANT_MANY_PANELS 512 /* batches of AVX2_FEW_ROWS+1..16 rows: AVX2 panels (where built) */
#define VARIANT_FEW_PANELS 1024 /* batches of 2..AVX2_FEW_ROWS rows: AVX2 panels (where built) */
#define VARIANT_BATCH_FLAGS (VARIANT_BATCH_BASE | VARIANT_FEW_REGS | VARIANT_MANY_PANELS | VARIANT_FEW_PANELS)
#define AVX2_FEW_ROWS 6 /* the most rows whose sums the AVX2 register path holds */
#define VARIANT_COUNT 6

/* One linear of a group product (duogpt_spmspv_group): its packed weight, and where its rows go in the
 * output (columns col0 .. col0 + n of each output row). kernels/cpu.py mirrors this layout. */
typedef struct {
    const uint64_t *bitmaps;
    const void *values;
    const int64_t *offsets;
    int64_t n, tile_rows, col0;
    int variant;
} duogpt_member;

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
 * positions. Up to 6 rows: columns in groups that fit in L2, one pass per 16 rows with the sums in
 * registers; 7-16 rows: panels of 64 columns expanded once into L1, then a dense register-blocked product.
 * Returns 0, or -1 where not compiled. */
int duogpt_avx2_batch(const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets, int64_t k,
                      int64_t words, const int32_t *active, int64_t n_active, const float *x, int64_t batch,
                      int64_t *cursor, float *y, int64_t n, int64_t count, int panels);

/* One stored value (dtype code) as float32, and 16 or 8 of them where the vector unit has that width. */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { /* subnormal */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) { bits = sign | 0x7f800000 | (man << 13); }
    else { bits = sign | ((exp + 127 - 15) << 23) | (man << 13); }
    float f; memcpy(&f, &bits, 4); return f;
}

static inline float load_scalar(const void *v, int64_t i, int dtype) {
    if (dtype == DT_F32) return ((const float *)v)[i];
    uint16_t h = ((const uint16_t *)v)[i];
    if (dtype == DT_F16) return half_to_float(h);
    uint32_t bits = (uint32_t)h << 16; float f; memcpy(&f, &bits, 4); return f;
}

#if defined(__AVX512F__)
static inline __m512 load16(const void *v, int64_t i, int dtype) {
    if (dtype == DT_F32) return _mm512_loadu_ps((const float *)v + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)v + i));
    if (dtype == DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
static inline __m256 load8(const void *v, int64_t i, int dtype) {
    if (dtype == DT_F32) return _mm256_loadu_ps((const float *)v + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)v + i));
    if (dtype == DT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

#endif
