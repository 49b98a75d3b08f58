/* Decode-row kernel variants (numbered in common.h), re-tiling of packed values, and the cache
 * flush the tuner times against. Same packed format as spmspv.c: per tile, per input column, a
 * bitmap of the tile's rows and the column's nonzero values in row order.
 *
 * Why the variants: at 50% weight density a 16-row chunk of a column holds 8 values, so a kernel
 * that expands 16 rows at a time spends one shuffle-port instruction per 8 multiply-adds and is
 * bound by that port, not by memory. A 16-bit expand places 32 bfloat16 rows at once; the
 * products then need no widening: vdpbf16ps multiplies pairs of 16-bit lanes, so with x given as
 * the pair (x, 0) it sums the even rows and with (0, x) the odd rows ("pair layout": ev lane i is
 * row 2i, od lane i row 2i + 1; undone when the tile is stored). Without AVX512-BF16 the same
 * layout comes from a shift and a mask. Strips (tiles of thousands of rows) make each active
 * column one long contiguous run per thread, which the prefetchers follow; their sums live in a
 * per-thread buffer in L1 instead of registers. Which wins depends on the CPU: kernels/tune.py
 * measures.
 */
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include "common.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI2__) && defined(__BMI2__)
#define HAVE_W16 1
#endif

/* Bit v: variant v is compiled in; bit VARIANT_NO_DP: vdpbf16ps is available. */
int duogpt_variants(void) {
    int mask = 1 | duogpt_avx2_variants();
#ifdef HAVE_W16
    mask |= 2 | 4 | 8;
#endif
#if defined(HAVE_W16) && defined(__AVX512BF16__)
    mask |= VARIANT_NO_DP;
#endif
    return mask;
}

#ifdef HAVE_W16
#define FAR 32
#define NEAR 8
#define PF_COLUMNS 4

static inline uint32_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u >> 16;
}

static inline __m512i expand32(uint32_t m, const uint16_t *p) {
    if (m == 0xffffffffu) return _mm512_loadu_si512((const void *)p);
    return _mm512_maskz_expand_epi16(m, _mm512_loadu_si512((const void *)p));
}

/* 32 rows of one column into the pair-layout sums (ev, od). */
static inline __attribute__((always_inline)) void bf16_fma(__m512i v, const int DP, __m512 xs, __m512i xe, __m512i xo,
                                                           __m512 *ev, __m512 *od) {
#if defined(__AVX512BF16__)
    if (DP) {
        *ev = _mm512_dpbf16_ps(*ev, (__m512bh)v, (__m512bh)xe);
        *od = _mm512_dpbf16_ps(*od, (__m512bh)v, (__m512bh)xo);
        return;
    }
#endif
    (void)xe;
    (void)xo;
    *ev = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xs, *ev);
    *od = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u))), xs, *od);
}

/* Pair layout of 32 rows -> the rows in order. */
static inline void store_pairs(float *dst, __m512 ev, __m512 od) {
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_storeu_ps(dst, _mm512_permutex2var_ps(ev, lo, od));
    _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(ev, hi, od));
}

typedef struct {
    __m512 xs;
    __m512i xe, xo;
} XPair;

static inline XPair xpair(float x) {
    const uint32_t b = bf16_bits(x);
    XPair p = {_mm512_set1_ps(x), _mm512_set1_epi32((int)b), _mm512_set1_epi32((int)(b << 16))};
    return p;
}

/* Variant 1: a tile of WORDS * 64 <= 256 rows, bfloat16, sums in 4 * WORDS registers. */
static inline __attribute__((always_inline)) void regs_bf16(const uint64_t *bitmaps, const uint16_t *values,
                                                            const int64_t *offsets, const int32_t *active,
                                                            int64_t n_active, const float *x, float *out,
                                                            const int WORDS, const int DP, const int PF) {
    __m512 ev[8], od[8];
    for (int c = 0; c < 2 * WORDS; c++) ev[c] = od[c] = _mm512_setzero_ps();
    for (int64_t a = 0; a < n_active; a++) {
        if (PF && a + FAR < n_active) { /* column jumps defeat the streamers: far ahead into L2, near into L1 */
            const int64_t jf = active[a + FAR], jn = active[a + NEAR];
            __builtin_prefetch(bitmaps + jf * WORDS, 0, 1);
            for (int c = 0; c < WORDS * 64; c += 64) {
                __builtin_prefetch((const char *)(values + offsets[jf]) + c, 0, 1);
                __builtin_prefetch((const char *)(values + offsets[jn]) + c, 0, 3);
            }
        }
        const int64_t j = active[a];
        const uint64_t *bm = bitmaps + j * WORDS;
        const uint16_t *p = values + offsets[j];
        const XPair xp = xpair(x[j]);
        for (int w = 0; w < WORDS; w++) {
            const uint64_t word = bm[w];
            const uint32_t lo = (uint32_t)word, hi = (uint32_t)(word >> 32);
            const uint16_t *q = p + __builtin_popcount(lo);
            bf16_fma(expand32(lo, p), DP, xp.xs, xp.xe, xp.xo, &ev[2 * w], &od[2 * w]);
            bf16_fma(expand32(hi, q), DP, xp.xs, xp.xe, xp.xo, &ev[2 * w + 1], &od[2 * w + 1]);
            p = q + __builtin_popcount(hi);
        }
    }
    for (int c = 0; c < 2 * WORDS; c++) store_pairs(out + 32 * c, ev[c], od[c]);
}

/* Prefetch a column of a strip: its whole segment (PF 2: bitmap words and values) or its first
 * lines (PF 1), the hardware prefetchers following from there. */
static inline __attribute__((always_inline)) void prefetch_column(const uint64_t *bitmaps, const char *values,
                                                                  int64_t esize, const int64_t *offsets, int64_t j,
                                                                  int64_t words, const int PF) {
    if (PF == 1) {
        const char *v = values + offsets[j] * esize;
        __builtin_prefetch(bitmaps + j * words, 0, 3);
        __builtin_prefetch(v, 0, 3);
        __builtin_prefetch(v + 64, 0, 3);
        return;
    }
    prefetch_segment(bitmaps, values, esize, offsets, j, words);
}

/* Variant 2, bfloat16: a strip of words * 64 rows, two columns per pass over the pair-layout sums. */
static inline __attribute__((always_inline)) void strip_bf16(const uint64_t *bitmaps, const uint16_t *values,
                                                             const int64_t *offsets, int64_t words,
                                                             const int32_t *active, int64_t n_active, const float *x,
                                                             float *acc, const int DP, const int PF) {
    memset(acc, 0, (size_t)words * 256);
    for (int64_t a = 0; a < n_active; a += 2) {
        const int two = a + 1 < n_active;
        const int64_t j0 = active[a], j1 = two ? active[a + 1] : j0;
        for (int64_t f = a + PF_COLUMNS; PF && f < a + PF_COLUMNS + 2 && f < n_active; f++)
            prefetch_column(bitmaps, (const char *)values, 2, offsets, active[f], words, PF);
        const uint64_t *b0 = bitmaps + j0 * words, *b1 = bitmaps + j1 * words;
        const uint16_t *p0 = values + offsets[j0], *p1 = values + offsets[j1];
        const XPair x0 = xpair(x[j0]), x1 = xpair(two ? x[j1] : 0.0f); /* an odd last column pairs with itself x 0 */
        for (int64_t w = 0; w < words; w++) {
            const uint64_t m0 = b0[w], m1 = b1[w];
            float *d = acc + 64 * w;
            __m512 e0 = _mm512_load_ps(d), o0 = _mm512_load_ps(d + 16);
            __m512 e1 = _mm512_load_ps(d + 32), o1 = _mm512_load_ps(d + 48);
            const uint16_t *q0 = p0 + __builtin_popcount((uint32_t)m0), *q1 = p1 + __builtin_popcount((uint32_t)m1);
            bf16_fma(expand32((uint32_t)m0, p0), DP, x0.xs, x0.xe, x0.xo, &e0, &o0);
            bf16_fma(expand32((uint32_t)(m0 >> 32), q0), DP, x0.xs, x0.xe, x0.xo, &e1, &o1);
            bf16_fma(expand32((uint32_t)m1, p1), DP, x1.xs, x1.xe, x1.xo, &e0, &o0);
            bf16_fma(expand32((uint32_t)(m1 >> 32), q1), DP, x1.xs, x1.xe, x1.xo, &e1, &o1);
            _mm512_store_ps(d, e0);
            _mm512_store_ps(d + 16, o0);
            _mm512_store_ps(d + 32, e1);
            _mm512_store_ps(d + 48, o1);
            p0 = q0 + __builtin_popcount((uint32_t)(m0 >> 32));
            p1 = q1 + __builtin_popcount((uint32_t)(m1 >> 32));
        }
    }
}

/* 16 rows of one column as float32: float32 values by an expand of 16-bit pairs (PAIRS) or of
 * 32-bit lanes, bfloat16 widened and then expanded. */
static inline __attribute__((always_inline)) __m512 chunk16(uint32_t m16, const char *p, const int DTYPE,
                                                            const int PAIRS) {
    if (DTYPE == DT_F32) {
        if (m16 == 0xffff) return _mm512_loadu_ps((const float *)p);
        if (PAIRS)
            return _mm512_castsi512_ps(
                _mm512_maskz_expand_epi16(_pdep_u32(m16, 0x55555555u) * 3u, _mm512_loadu_si512((const void *)p)));
        return _mm512_maskz_expand_ps((__mmask16)m16, _mm512_loadu_ps((const float *)p));
    }
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_maskz_expand_ps((__mmask16)m16, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
}

/* Variants 2 (float32) and 3: a strip, rows in order, two columns per pass, 16 rows per expand. */
static inline __attribute__((always_inline)) void strip16(const uint64_t *bitmaps, const char *values,
                                                          const int64_t *offsets, int64_t words, const int32_t *active,
                                                          int64_t n_active, const float *x, float *acc, const int DTYPE,
                                                          const int PAIRS, const int PF) {
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    memset(acc, 0, (size_t)words * 256);
    for (int64_t a = 0; a < n_active; a += 2) {
        const int two = a + 1 < n_active;
        const int64_t j0 = active[a], j1 = two ? active[a + 1] : j0;
        for (int64_t f = a + PF_COLUMNS; PF && f < a + PF_COLUMNS + 2 && f < n_active; f++)
            prefetch_column(bitmaps, values, esize, offsets, active[f], words, PF);
        const uint64_t *b0 = bitmaps + j0 * words, *b1 = bitmaps + j1 * words;
        const char *p0 = values + offsets[j0] * esize, *p1 = values + offsets[j1] * esize;
        const __m512 x0 = _mm512_set1_ps(x[j0]), x1 = _mm512_set1_ps(two ? x[j1] : 0.0f);
        for (int64_t w = 0; w < words; w++) {
            const uint64_t m0 = b0[w], m1 = b1[w];
            float *d = acc + 64 * w;
            for (int s = 0; s < 4; s++) {
                const uint64_t below = s ? (~0ull >> (64 - 16 * s)) : 0;
                const uint32_t s0 = (uint32_t)(m0 >> (16 * s)) & 0xffff, s1 = (uint32_t)(m1 >> (16 * s)) & 0xffff;
                const __m512 v0 = chunk16(s0, p0 + __builtin_popcountll(m0 & below) * esize, DTYPE, PAIRS);
                const __m512 v1 = chunk16(s1, p1 + __builtin_popcountll(m1 & below) * esize, DTYPE, PAIRS);
                _mm512_store_ps(d + 16 * s, _mm512_fmadd_ps(v1, x1, _mm512_fmadd_ps(v0, x0, _mm512_load_ps(d + 16 * s))));
            }
            p0 += __builtin_popcountll(m0) * esize;
            p1 += __builtin_popcountll(m1) * esize;
        }
    }
}

static void write_rows(const float *acc, int pairs, float *out, int64_t count) {
    if (!pairs) {
        memcpy(out, acc, (size_t)count * sizeof(float));
        return;
    }
    for (int64_t c = 0; 32 * c < count; c++) {
        const __m512 ev = _mm512_load_ps(acc + 32 * c), od = _mm512_load_ps(acc + 32 * c + 16);
        if (32 * c + 32 <= count) {
            store_pairs(out + 32 * c, ev, od);
        } else {
            float tmp[32];
            store_pairs(tmp, ev, od);
            memcpy(out + 32 * c, tmp, (size_t)(count - 32 * c) * sizeof(float));
        }
    }
}

static int regs_dispatch(const uint64_t *bitmaps, const uint16_t *values, const int64_t *offsets, int64_t words,
                         const int32_t *active, int64_t n_active, const float *x, int dp, int pf, float *out) {
#define DUOGPT_REGS(W)                                                                          \
    if (words == W) {                                                                           \
        if (dp && pf) regs_bf16(bitmaps, values, offsets, active, n_active, x, out, W, 1, 1);   \
        else if (dp) regs_bf16(bitmaps, values, offsets, active, n_active, x, out, W, 1, 0);    \
        else if (pf) regs_bf16(bitmaps, values, offsets, active, n_active, x, out, W, 0, 1);    \
        else regs_bf16(bitmaps, values, offsets, active, n_active, x, out, W, 0, 0);            \
        return 0;                                                                               \
    }
    DUOGPT_REGS(1) DUOGPT_REGS(2) DUOGPT_REGS(3) DUOGPT_REGS(4)
#undef DUOGPT_REGS
    return -1;
}

/* Strips: every instantiation of (dtype, expand, multiply, prefetch). */
static void strip_dispatch(int v, const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets,
                           int64_t words, const int32_t *active, int64_t n_active, const float *x, int dp, int pf,
                           float *acc) {
    const char *vals = (const char *)values;
#define DUOGPT_STRIP(PF)                                                                                     \
    if (pf == PF) {                                                                                          \
        if (dtype == DT_BF16 && v == 2 && dp)                                                                \
            strip_bf16(bitmaps, (const uint16_t *)values, offsets, words, active, n_active, x, acc, 1, PF);  \
        else if (dtype == DT_BF16 && v == 2)                                                                 \
            strip_bf16(bitmaps, (const uint16_t *)values, offsets, words, active, n_active, x, acc, 0, PF);  \
        else if (dtype == DT_F32 && v == 2)                                                                  \
            strip16(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_F32, 1, PF);                 \
        else if (dtype == DT_F32)                                                                            \
            strip16(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_F32, 0, PF);                 \
        else                                                                                                 \
            strip16(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_BF16, 0, PF);                \
        return;                                                                                              \
    }
    DUOGPT_STRIP(0) DUOGPT_STRIP(1) DUOGPT_STRIP(2)
#undef DUOGPT_STRIP
}
#endif

int duogpt_variant_tile(int variant, const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets,
                        int64_t words, const int32_t *active, int64_t n_active, const float *x, int dp, float *acc,
                        float *out, int64_t count) {
    const int v = variant & (VARIANT_NO_DP - 1);
    const int pf = variant & VARIANT_NO_PF ? 0 : variant & VARIANT_PF_HEAD ? 1 : 2;
    if (v == 4 || v == 5)
        return duogpt_avx2_tile(v, pf != 0, bitmaps, values, dtype, offsets, words, active, n_active, x, acc, out,
                                count);
#ifdef HAVE_W16
#if defined(__AVX512BF16__)
    dp = dp && !(variant & VARIANT_NO_DP);
#else
    dp = 0;
#endif
    if (v == 1) {
        if (dtype != DT_BF16 || words > 4) return -1;
        float *dst = count == words * 64 ? out : acc;
        if (regs_dispatch(bitmaps, (const uint16_t *)values, offsets, words, active, n_active, x, dp, pf != 0, dst))
            return -1;
        if (dst != out) memcpy(out, acc, (size_t)count * sizeof(float));
        return 0;
    }
    if ((v == 2 || v == 3) && dtype != DT_F16) {
        strip_dispatch(v, bitmaps, values, dtype, offsets, words, active, n_active, x, dp, pf, acc);
        write_rows(acc, v == 2 && dtype == DT_BF16, out, count);
        return 0;
    }
#else
    (void)dp;
#endif
    return -1;
}

/* Re-tiling: the values of a weight packed in tiles of wi words (64 rows each), copied into the
 * order of tiles of wo words. off_out comes from the new bitmaps' counts; each new segment is
 * gathered from the old tiles it spans, one memcpy per old tile. Returns 0, or -1 on bad arguments. */
int duogpt_retile_values(const uint64_t *bm_in, const void *val_in, int elem, const int64_t *off_in, int64_t k,
                         int64_t wi, int64_t tiles_in, const int64_t *off_out, int64_t wo, int64_t tiles_out,
                         void *val_out, int nthreads) {
    if ((elem != 2 && elem != 4) || wi < 1 || wo < 1 || k < 1) return -1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (tiles_out > 1 && nthreads > 1)
    for (int64_t T = 0; T < tiles_out; T++) {
        for (int64_t j = 0; j < k; j++) {
            char *dst = (char *)val_out + off_out[T * (k + 1) + j] * elem;
            for (int64_t g = T * wo, end = g + wo; g < end;) { /* g: global index of a 64-row word */
                const int64_t t = g / wi;
                if (t >= tiles_in) break;
                const int64_t w0 = g - t * wi, w1 = end - t * wi < wi ? end - t * wi : wi;
                const uint64_t *bm = bm_in + (t * k + j) * wi;
                int64_t pos = off_in[t * (k + 1) + j], count = 0;
                for (int64_t w = 0; w < w0; w++) pos += __builtin_popcountll(bm[w]);
                for (int64_t w = w0; w < w1; w++) count += __builtin_popcountll(bm[w]);
                memcpy(dst, (const char *)val_in + pos * elem, (size_t)(count * elem));
                dst += count * elem;
                g = t * wi + w1;
            }
        }
    }
    return 0;
}

/* Evict [p, p + bytes) from every cache level (the tuner times kernels on weights that come from
 * memory, as in decode). Returns -1 where the CPU has no flush instruction. */
int duogpt_flush(const void *p, int64_t bytes) {
#if defined(__x86_64__) || defined(_M_X64)
    for (uintptr_t c = (uintptr_t)p & ~(uintptr_t)63, end = (uintptr_t)p + (uintptr_t)bytes; c < end; c += 64)
        _mm_clflush((const void *)c);
    _mm_mfence();
    return 0;
#else
    (void)p, (void)bytes;
    return -1;
#endif
}

/* Read n floats as fast as the machine allows (threads split the range, several independent sums
 * per thread): the read-bandwidth probe the benchmarks compare against. Returns the sum. */
double duogpt_stream_sum(const float *p, int64_t n, int nthreads) {
    double total = 0.0;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+ : total)
    for (int64_t c = 0; c < (n + 4095) / 4096; c++) {
        const int64_t start = c * 4096, end = start + 4096 < n ? start + 4096 : n;
        int64_t i = start;
        float lanes[64] = {0}; /* 64 independent sums: the compiler turns the inner loop into vector adds */
        for (; i + 64 <= end; i += 64)
            for (int l = 0; l < 64; l++) lanes[l] += p[i + l];
        for (int l = 0; l < 64; l++) total += lanes[l];
        float rest = 0.0f;
        for (; i < end; i++) rest += p[i];
        total += rest;
    }
    return total;
}
