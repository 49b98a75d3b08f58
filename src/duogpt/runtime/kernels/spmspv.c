/* y = W x for a dual-sparse W stored as column segments (see duogpt/sparse_format.py),
 * reading only the segments of columns with x_j != 0.
 *
 * Compiled by duogpt/kernels/cpu.py for the machine it runs on. The inner step decodes
 * one bitmap chunk into a vector of weights: AVX-512 (16 lanes, expand instruction),
 * AVX2 (8 lanes, permutation table), or a portable loop over set bits. Threads split
 * the output tiles. Values are float32, float16 or bfloat16; x and y are float32.
 * Decode (batch 1) on tiles of at most 256 rows takes the fast path: sums in registers,
 * chunk positions from prefix popcounts, 16-bit expands, prefetch of the next columns.
 * The values array must have 64 bytes of readable padding after its end (vector loads).
 * ``variant`` (common.h, chosen per CPU and shape by kernels/tune.py) selects a batch-1 path
 * from variants.c; 0, or a variant that does not apply, takes the paths in this file.
 */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include "common.h"

const char *duogpt_spmspv_isa(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    return "avx2";
#else
    return "portable";
#endif
}

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LANES 8
static int32_t perm_table[256][8];
static int32_t keep_table[256][8];
static void init_tables(void) {
    for (int m = 0; m < 256; m++) {
        int next = 0;
        for (int lane = 0; lane < 8; lane++) {
            int on = (m >> lane) & 1;
            perm_table[m][lane] = on ? next : 0;
            keep_table[m][lane] = on ? -1 : 0;
            next += on;
        }
    }
}
#else
#define LANES 1
#endif

#if defined(__AVX512F__) && defined(__AVX512VBMI2__) && defined(__AVX512BW__)
#define HAVE_EXPAND16 1
#endif

#if LANES == 16
#ifndef FAR
#define FAR 32
#endif
#ifndef NEAR
#define NEAR 8
#endif
/* Batch 1, tiles of WORDS * 64 <= 256 rows: the tile's sums stay in (up to 16) registers, and each
 * chunk's position in the values comes from a prefix popcount of its word, so chunks do not wait
 * on each other; only words chain. WORDS and DTYPE are constants in every instantiation. */
static inline __attribute__((always_inline)) void tile_b1_regs(const uint64_t *bitmaps, const void *values,
                                                               const int64_t *offsets, const int32_t *active,
                                                               int64_t n_active, const float *x, float *out,
                                                               const int WORDS, const int DTYPE) {
    __m512 acc[16];
    for (int i = 0; i < 4 * WORDS; i++) acc[i] = _mm512_setzero_ps();
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    for (int64_t a = 0; a < n_active; a++) {
        const int64_t j = active[a];
        if (a + FAR < n_active) { /* far ahead into L2, near ahead into L1: column jumps defeat the streamers */
            const int64_t jf = active[a + FAR], jn = active[a + NEAR];
            __builtin_prefetch(bitmaps + jf * WORDS, 0, 1);
            const char *vf = (const char *)values + offsets[jf] * esize, *vn = (const char *)values + offsets[jn] * esize;
            for (int c = 0; c < WORDS * 64 * esize / 2; c += 64) {
                __builtin_prefetch(vf + c, 0, 1);
                __builtin_prefetch(vn + c, 0, 3);
            }
        }
        const uint64_t *bm = bitmaps + j * WORDS;
        int64_t base = offsets[j];
        const __m512 xj = _mm512_set1_ps(x[j]);
        for (int w = 0; w < WORDS; w++) {
            const uint64_t word = bm[w];
#if defined(HAVE_EXPAND16) && defined(__BMI2__)
            /* The 16-bit expand is several times cheaper than the 32-bit one on the AMD cores this was
               tuned on. float32 expands as pairs of halves; bfloat16 expands into the upper half of
               each 32-bit lane, which is its float32 value. A full chunk is a plain load. */
            if (DTYPE != DT_F16) {
                const int64_t pos[4] = {base, base + __builtin_popcountll(word & 0xffffull),
                                        base + __builtin_popcountll(word & 0xffffffffull),
                                        base + __builtin_popcountll(word & 0xffffffffffffull)};
                for (int s = 0; s < 4; s++) {
                    const uint32_t m16 = (uint32_t)(word >> (16 * s)) & 0xffff;
                    __m512 v;
                    if (m16 == 0xffff) {
                        v = load16(values, pos[s], DTYPE);
                    } else if (DTYPE == DT_F32) {
                        const __m512i raw = _mm512_loadu_si512((const void *)((const float *)values + pos[s]));
                        v = _mm512_castsi512_ps(_mm512_maskz_expand_epi16(_pdep_u32(m16, 0x55555555u) * 3u, raw));
                    } else {
                        const __m512i raw = _mm512_loadu_si512((const void *)((const uint16_t *)values + pos[s]));
                        v = _mm512_castsi512_ps(_mm512_maskz_expand_epi16(_pdep_u32(m16, 0xaaaaaaaau), raw));
                    }
                    acc[4 * w + s] = _mm512_fmadd_ps(v, xj, acc[4 * w + s]);
                }
                base += __builtin_popcountll(word);
                continue;
            }
#endif
            const int64_t pos[4] = {base, base + __builtin_popcountll(word & 0xffffull),
                                    base + __builtin_popcountll(word & 0xffffffffull),
                                    base + __builtin_popcountll(word & 0xffffffffffffull)};
            for (int s = 0; s < 4; s++) {
                const __m512 v = _mm512_maskz_expand_ps((__mmask16)(word >> (16 * s)), load16(values, pos[s], DTYPE));
                acc[4 * w + s] = _mm512_fmadd_ps(v, xj, acc[4 * w + s]);
            }
            base += __builtin_popcountll(word);
        }
    }
    for (int i = 0; i < 4 * WORDS; i++) _mm512_storeu_ps(out + 16 * i, acc[i]);
}

/* Returns 0 when it handled the tile (batch 1, at most 256 rows). */
static int tile_b1_fast(const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets,
                        int64_t words, const int32_t *active, int64_t n_active, const float *x, float *out) {
#define DUOGPT_CASE(W, D)                                                                      \
    if (words == W && dtype == D) {                                                            \
        tile_b1_regs(bitmaps, values, offsets, active, n_active, x, out, W, D);                \
        return 0;                                                                              \
    }
    DUOGPT_CASE(1, DT_F32) DUOGPT_CASE(2, DT_F32) DUOGPT_CASE(3, DT_F32) DUOGPT_CASE(4, DT_F32)
    DUOGPT_CASE(1, DT_F16) DUOGPT_CASE(2, DT_F16) DUOGPT_CASE(3, DT_F16) DUOGPT_CASE(4, DT_F16)
    DUOGPT_CASE(1, DT_BF16) DUOGPT_CASE(2, DT_BF16) DUOGPT_CASE(3, DT_BF16) DUOGPT_CASE(4, DT_BF16)
#undef DUOGPT_CASE
    return -1;
}
#endif

/* One block of ``words`` 64-row words of a tile: acc[b][r] += sum over active j of W[r, j] * x[b, j].
 * Column j's bitmap words are at bitmaps + j * wstride; the a-th active column's values start at
 * starts[a] (blocks of a taller tile carry these cursors from block to block). */
static void tile_product(const uint64_t *bitmaps, const void *values, int dtype, const int64_t *starts,
                         int64_t wstride, int64_t k, int64_t words, const int32_t *active, int64_t n_active,
                         const float *x, int64_t batch, float *acc /* [batch][words * 64] */) {
    const int64_t rows = words * 64;
    const int64_t esize = dtype == DT_F32 ? 4 : 2;
    int64_t a = 0;
#if LANES == 16
    /* Two columns at a time: two independent pointer chains, one accumulator update. */
    for (; a + 1 < n_active; a += 2) {
        const int64_t j0 = active[a], j1 = active[a + 1];
        const uint64_t *bm0 = bitmaps + j0 * wstride, *bm1 = bitmaps + j1 * wstride;
        int64_t p0 = starts[a], p1 = starts[a + 1];
        if (a + 3 < n_active) {
            __builtin_prefetch(bitmaps + active[a + 2] * wstride);
            __builtin_prefetch(bitmaps + active[a + 3] * wstride);
            __builtin_prefetch((const char *)values + starts[a + 2] * esize);
            __builtin_prefetch((const char *)values + starts[a + 3] * esize);
        }
        __m512 x0[MAX_BATCH], x1[MAX_BATCH];
        for (int64_t b = 0; b < batch; b++) {
            x0[b] = _mm512_set1_ps(x[b * k + j0]);
            x1[b] = _mm512_set1_ps(x[b * k + j1]);
        }
        for (int64_t w = 0; w < words; w++) {
            const uint64_t w0 = bm0[w], w1 = bm1[w];
            if (!(w0 | w1)) continue;
            for (int s = 0; s < 4; s++) {
                const __mmask16 m0 = (__mmask16)(w0 >> (16 * s)), m1 = (__mmask16)(w1 >> (16 * s));
                const __m512 v0 = _mm512_maskz_expand_ps(m0, load16(values, p0, dtype));
                const __m512 v1 = _mm512_maskz_expand_ps(m1, load16(values, p1, dtype));
                p0 += __builtin_popcount(m0);
                p1 += __builtin_popcount(m1);
                float *dst = acc + w * 64 + s * 16;
                for (int64_t b = 0; b < batch; b++) {
                    float *d = dst + b * rows;
                    _mm512_storeu_ps(d, _mm512_fmadd_ps(v1, x1[b], _mm512_fmadd_ps(v0, x0[b], _mm512_loadu_ps(d))));
                }
            }
        }
    }
#endif
    for (; a < n_active; a++) {
        const int64_t j = active[a];
        const uint64_t *bm = bitmaps + j * wstride;
        int64_t pos = starts[a];
        if (a + 1 < n_active) {
            __builtin_prefetch(bitmaps + active[a + 1] * wstride);
            __builtin_prefetch((const char *)values + starts[a + 1] * esize);
        }
#if LANES == 16
        __m512 xb[MAX_BATCH];
        for (int64_t b = 0; b < batch; b++) xb[b] = _mm512_set1_ps(x[b * k + j]);
        for (int64_t w = 0; w < words; w++) {
            const uint64_t word = bm[w];
            if (!word) continue;
            for (int s = 0; s < 4; s++) {
                const __mmask16 m = (__mmask16)(word >> (16 * s));
                if (!m) continue;
                const __m512 vals = _mm512_maskz_expand_ps(m, load16(values, pos, dtype));
                pos += __builtin_popcount(m);
                float *dst = acc + w * 64 + s * 16;
                for (int64_t b = 0; b < batch; b++) {
                    float *d = dst + b * rows;
                    _mm512_storeu_ps(d, _mm512_fmadd_ps(vals, xb[b], _mm512_loadu_ps(d)));
                }
            }
        }
#elif LANES == 8
        __m256 xb[MAX_BATCH];
        for (int64_t b = 0; b < batch; b++) xb[b] = _mm256_set1_ps(x[b * k + j]);
        for (int64_t w = 0; w < words; w++) {
            const uint64_t word = bm[w];
            if (!word) continue;
            for (int s = 0; s < 8; s++) {
                const unsigned m = (unsigned)(word >> (8 * s)) & 0xff;
                if (!m) continue;
                const __m256i perm = _mm256_loadu_si256((const __m256i *)perm_table[m]);
                const __m256 keep = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)keep_table[m]));
                const __m256 vals = _mm256_and_ps(_mm256_permutevar8x32_ps(load8(values, pos, dtype), perm), keep);
                pos += __builtin_popcount(m);
                float *dst = acc + w * 64 + s * 8;
                for (int64_t b = 0; b < batch; b++) {
                    float *d = dst + b * rows;
                    _mm256_storeu_ps(d, _mm256_fmadd_ps(vals, xb[b], _mm256_loadu_ps(d)));
                }
            }
        }
#else
        for (int64_t w = 0; w < words; w++) {
            uint64_t word = bm[w];
            while (word) {
                const int r = __builtin_ctzll(word);
                const float v = load_scalar(values, pos++, dtype);
                for (int64_t b = 0; b < batch; b++) acc[b * rows + w * 64 + r] += v * x[b * k + j];
                word &= word - 1;
            }
        }
#endif
    }
}

/* Columns with a nonzero input in any row, in order; *exact: every active x of a single row is a
 * bfloat16 value (what vdpbf16ps needs). Returns the count. */
static int64_t active_columns(const float *x, int64_t k, int64_t batch, int32_t *active, int *exact) {
    int64_t n_active = 0;
    *exact = batch == 1;
    for (int64_t j = 0; j < k; j++) {
        int on = 0;
        for (int64_t b = 0; b < batch; b++) on |= x[b * k + j] != 0.0f;
        if (!on) continue;
        active[n_active++] = (int32_t)j;
        uint32_t bits;
        memcpy(&bits, x + j, 4);
        *exact &= (bits & 0xffffu) == 0;
    }
    return n_active;
}

/* One tile by the paths of this file, in blocks of at most BLOCK_WORDS words (a tile may be a strip of
 * thousands of rows, planned for batch 1: the sums of a batch stay in L1 per block). acc holds
 * batch * BLOCK_WORDS * 64 floats, starts n_active cursors. */
static int base_tile(const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets, int64_t k,
                     int64_t words, const int32_t *active, int64_t n_active, const float *x, int64_t batch,
                     float *acc, int64_t *starts, float *y, int64_t n, int64_t row0, int64_t count) {
#if LANES == 16
    if (batch == 1 && words <= 4) { /* the last tile may be cut short: sum into a full buffer first */
        float *out = count == words * 64 ? y + row0 : acc;
        if (tile_b1_fast(bitmaps, values, dtype, offsets, words, active, n_active, x, out)) return -1;
        if (out == acc) memcpy(y + row0, acc, sizeof(float) * count);
        return 0;
    }
#endif
    for (int64_t a = 0; a < n_active; a++) starts[a] = offsets[active[a]];
    for (int64_t w0 = 0; w0 < words && w0 * 64 < count; w0 += BLOCK_WORDS) {
        const int64_t bw = words - w0 < BLOCK_WORDS ? words - w0 : BLOCK_WORDS, block_rows = bw * 64;
        const int64_t left = count - w0 * 64, keep = left < block_rows ? left : block_rows;
        memset(acc, 0, sizeof(float) * (size_t)(batch * block_rows));
        tile_product(bitmaps + w0, values, dtype, starts, words, k, bw, active, n_active, x, batch, acc);
        for (int64_t b = 0; b < batch; b++)
            memcpy(y + b * n + row0 + w0 * 64, acc + b * block_rows, sizeof(float) * (size_t)keep);
        if (w0 + bw < words)
            for (int64_t a = 0; a < n_active; a++) {
                const uint64_t *bm = bitmaps + active[a] * words + w0;
                for (int64_t w = 0; w < bw; w++) starts[a] += __builtin_popcountll(bm[w]);
            }
    }
    return 0;
}

/* The path of a batch of 2..16 rows: 0 the base path, 1 AVX2's sums in registers, 2 AVX2's panels (avx2.c; the
 * base path where the build lacks them). As the member's batch flags say for its range of rows (kernels/tune.py
 * times the paths per CPU and shape and sets them), else the build's default: on AVX2 builds registers up to
 * AVX2_FEW_ROWS rows and panels above, on AVX-512 builds the base path (16-lane expands). */
static int batch_path(int variant, int64_t batch) {
    const int few = batch <= AVX2_FEW_ROWS;
    if (!(variant & VARIANT_BATCH_FLAGS)) return LANES == 8 ? (few ? 1 : 2) : 0;
    if (!few) return variant & VARIANT_MANY_PANELS ? 2 : 0;
    return variant & VARIANT_FEW_REGS ? 1 : variant & VARIANT_FEW_PANELS ? 2 : 0;
}

/* One tile of one member into its rows of y (row stride ld); 0, or -1 where no path took it. */
static int member_tile(const duogpt_member *m, int64_t t, int64_t k, const int32_t *active, int64_t n_active,
                       const float *x, int exact, int64_t batch, float *acc, int64_t *starts, float *y, int64_t ld,
                       int dtype) {
    const int64_t words = m->tile_rows / 64, row0 = t * m->tile_rows;
    const int64_t count = (m->n - row0) < m->tile_rows ? (m->n - row0) : m->tile_rows;
    const uint64_t *bm = m->bitmaps + t * k * words;
    const int64_t *off = m->offsets + t * (k + 1);
    float *ym = y + m->col0;
    if (batch == 1 && m->variant &&
        duogpt_variant_tile(m->variant, bm, m->values, dtype, off, words, active, n_active, x, exact, acc, ym + row0,
                            count) == 0)
        return 0;
    const int path = batch > 1 ? batch_path(m->variant, batch) : 0;
    if (path && duogpt_avx2_batch(bm, m->values, dtype, off, k, words, active, n_active, x, batch, starts, ym + row0,
                                  ld, count, path == 2) == 0)
        return 0;
    return base_tile(bm, m->values, dtype, off, k, words, active, n_active, x, batch, acc, starts, ym, ld, row0, count);
}

/* Tiles of every member in one sequence; thread th of nth takes those whose middle row (counted over all
 * members) falls in its share, so members of different tile heights still split evenly. */
static int thread_share(const duogpt_member *members, int count, int64_t total_rows, int th, int nth,
                        int64_t k, const int32_t *active, int64_t n_active, const float *x, int exact, int64_t batch,
                        float *acc, int64_t *starts, float *y, int64_t ld, int dtype) {
    int failed = 0;
    int64_t before = 0;
    for (int i = 0; i < count; i++) {
        const duogpt_member *m = members + i;
        for (int64_t t = 0; t * m->tile_rows < m->n; t++) {
            const int64_t mid = before + t * m->tile_rows + m->tile_rows / 2;
            if (mid * nth / total_rows != th && !(th == nth - 1 && mid >= total_rows)) continue;
            failed |= member_tile(m, t, k, active, n_active, x, exact, batch, acc, starts, y, ld, dtype) != 0;
        }
        before += m->n;
    }
    return failed;
}

/* x with |x| <= tau set to zero (the activation sparsifier, applied here so the runtime needs no pass of
 * its own); NaN stays, as in the sparsifier. NULL when out of memory. */
static float *thresholded(const float *x, int64_t size, float tau) {
    float *out = (float *)malloc(sizeof(float) * (size_t)(size > 0 ? size : 1));
    if (out)
        for (int64_t i = 0; i < size; i++) out[i] = fabsf(x[i]) <= tau ? 0.0f : x[i];
    return out;
}

/* y[b, col0_i + r] = (W_i s(x_b))[r] for every member i, s zeroing |x| <= tau (tau 0: x as given): linears
 * that read the same input (q/k/v, gate/up), or one linear; one pass over the input to find its active
 * columns, one parallel region for all their tiles. Returns 0 on success, -1 on bad arguments. */
int duogpt_spmspv_group(const duogpt_member *members, int count, int dtype, int64_t k, const float *x, int64_t batch,
                        float tau, float *y, int64_t ld, int nthreads) {
    if (batch < 1 || batch > MAX_BATCH || dtype < 0 || dtype > 2 || count < 1) return -1;
    int64_t max_tile = 0, total_rows = 0, tiles = 0;
    for (int i = 0; i < count; i++) {
        const duogpt_member *m = members + i;
        if (m->tile_rows < 64 || m->tile_rows % 64 || m->n < 0 || m->col0 < 0 || m->col0 + m->n > ld) return -1;
        max_tile = m->tile_rows > max_tile ? m->tile_rows : max_tile;
        total_rows += m->n;
        tiles += (m->n + m->tile_rows - 1) / m->tile_rows;
    }
    if (tiles == 0) return 0;
#if LANES == 8
    static int ready = 0;
    if (!ready) { init_tables(); ready = 1; }
#endif
    float *x_own = tau > 0.0f ? thresholded(x, batch * k, tau) : NULL;
    int32_t *active = (int32_t *)malloc(sizeof(int32_t) * (size_t)(k > 0 ? k : 1));
    if (!active || (tau > 0.0f && !x_own)) {
        free(active);
        free(x_own);
        return -1;
    }
    if (x_own) x = x_own;
    int exact, failed = 0;
    const int64_t n_active = active_columns(x, k, batch, active, &exact);
#pragma omp parallel num_threads(nthreads) if (tiles > 1 && nthreads > 1)
    {
        /* variants use a whole tile, the base path a block of it per batch row */
        const int64_t block = max_tile < BLOCK_WORDS * 64 ? max_tile : BLOCK_WORDS * 64;
        const int64_t acc_floats = max_tile > batch * block ? max_tile : batch * block;
        float *acc = (float *)aligned_alloc(64, sizeof(float) * (size_t)acc_floats);
        int64_t *starts = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n_active > 0 ? n_active : 1));
#ifdef _OPENMP
        const int th = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        const int th = 0, nth = 1;
#endif
        const int bad = !acc || !starts ||
                        thread_share(members, count, total_rows, th, nth, k, active, n_active, x, exact, batch, acc,
                                     starts, y, ld, dtype);
        if (bad) {
#pragma omp atomic write
            failed = 1;
        }
        free(acc);
        free(starts);
    }
    free(active);
    free(x_own);
    return failed ? -1 : 0;
}

/* Unpack to the transposed dense matrix: row-major (k, n), i.e. W^T, in the values' own dtype
 * (elem_bytes 2 or 4). Column j's segment of a tile is a contiguous run of out[j * n + row], so
 * every write stays within a few cache lines and pages; every element is written (zeros
 * included), tiles split across threads. This is the batched path's weight: prefill
 * multiplies by it (x @ W^T), one linear at a time, in a reused buffer.
 * Returns 0 on success, -1 on bad arguments. */
int duogpt_unpack(const uint64_t *bitmaps, const void *values, int elem_bytes, const int64_t *offsets, int64_t n,
                  int64_t k, int64_t tile_rows, void *out, int nthreads) {
    if (tile_rows % 64 || (elem_bytes != 2 && elem_bytes != 4)) return -1;
    const int64_t words = tile_rows / 64, n_tiles = (n + tile_rows - 1) / tile_rows;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (n_tiles > 1 && nthreads > 1)
    for (int64_t t = 0; t < n_tiles; t++) {
        const int64_t row0 = t * tile_rows, count = (n - row0) < tile_rows ? (n - row0) : tile_rows;
        for (int64_t j = 0; j < k; j++) {
            int64_t pos = offsets[t * (k + 1) + j];
            const uint64_t *bm = bitmaps + (t * k + j) * words;
            char *col = (char *)out + (j * n + row0) * elem_bytes;
#if defined(__AVX512F__)
            if (elem_bytes == 4) { /* 16 rows per step: expand-load the set lanes, zeros elsewhere */
                const uint32_t *v = (const uint32_t *)values;
                for (int64_t r = 0; r < count; r += 16) {
                    const __mmask16 m = (__mmask16)(bm[r / 64] >> (r % 64));
                    const __m512i x = _mm512_maskz_expandloadu_epi32(m, v + pos);
                    const int64_t left = count - r;
                    _mm512_mask_storeu_epi32((uint32_t *)col + r, left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1), x);
                    pos += __builtin_popcount((unsigned)m);
                }
                continue;
            }
#endif
#if defined(__AVX512VBMI2__) && defined(__AVX512BW__)
            if (elem_bytes == 2) { /* 32 rows per step */
                const uint16_t *v = (const uint16_t *)values;
                for (int64_t r = 0; r < count; r += 32) {
                    const __mmask32 m = (__mmask32)(bm[r / 64] >> (r % 64));
                    const __m512i x = _mm512_maskz_expandloadu_epi16(m, v + pos);
                    const int64_t left = count - r;
                    _mm512_mask_storeu_epi16((uint16_t *)col + r, left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1), x);
                    pos += __builtin_popcount((unsigned)m);
                }
                continue;
            }
#endif
            memset(col, 0, (size_t)(count * elem_bytes));
            for (int64_t w = 0; w < words; w++) {
                uint64_t word = bm[w];
                while (word) {
                    const int64_t r = w * 64 + __builtin_ctzll(word);
                    if (elem_bytes == 2) ((uint16_t *)col)[r] = ((const uint16_t *)values)[pos++];
                    else ((uint32_t *)col)[r] = ((const uint32_t *)values)[pos++];
                    word &= word - 1;
                }
            }
        }
    }
    return 0;
}
