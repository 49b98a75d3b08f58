/* Decode-row variants for CPUs with AVX2 but no AVX-512 (variants 4 and 5 in common.h); they
 * also build, and are timed, where AVX-512 exists. Same packed format as spmspv.c.
 *
 * AVX2 has no expand instruction. The original path (variant 0) emulates one per 8 rows with a
 * permutation table, a mask AND, and sums that go through memory: about ten instructions per
 * 4 nonzeros at 50% density, so it ran at 0.4-0.5x of the memory roofline and slower than
 * torch's dense bfloat16 GEMV. Here one 8-row chunk costs a byte shuffle and a multiply-add:
 *
 * - bfloat16: the chunk's next 8 values (16 bytes) are loaded into both halves of a ymm and
 *   one vpshufb places value r in the high half of float32 lane i (r = set bits below i),
 *   zeros elsewhere: expanded and widened in one instruction (control: 32 bytes per mask,
 *   8 KiB for all 256 masks).
 * - float16: the same shuffle to 16-bit lanes, then vcvtph2ps.
 * - float32: vpermps with a per-mask permutation, then an AND with the mask's lanes.
 *
 * Each row's products are added in the active columns' order with one rounding per add, as in
 * every other variant: all give the same bits.
 *
 * Variant 4: tiles of 64 rows, sums in 8 ymm registers; a tile's column segments are adjacent
 *   in memory, so the active ones are read as one forward sweep with gaps.
 * Variant 5: strips (one per thread), sums in a per-thread buffer in L1, two columns per pass;
 *   each active column is one long contiguous run.
 */
#include <stdint.h>
#include <string.h>
#include "common.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define FAR8 32 /* columns ahead for software prefetch (variant 4) */

static uint8_t bf16_ctrl[256][32] __attribute__((aligned(32)));
static uint8_t f16_ctrl[256][16] __attribute__((aligned(16)));
static int32_t f32_perm[256][8] __attribute__((aligned(32)));
static int32_t f32_keep[256][8] __attribute__((aligned(32)));

__attribute__((constructor)) static void avx2_tables(void) {
    for (int m = 0; m < 256; m++) {
        int r = 0;
        for (int i = 0; i < 8; i++) {
            const int on = (m >> i) & 1;
            uint8_t *b = bf16_ctrl[m] + 4 * i;
            b[0] = b[1] = 0x80;
            b[2] = on ? (uint8_t)(2 * r) : 0x80;
            b[3] = on ? (uint8_t)(2 * r + 1) : 0x80;
            f16_ctrl[m][2 * i] = on ? (uint8_t)(2 * r) : 0x80;
            f16_ctrl[m][2 * i + 1] = on ? (uint8_t)(2 * r + 1) : 0x80;
            f32_perm[m][i] = on ? r : 0;
            f32_keep[m][i] = on ? -1 : 0;
            r += on;
        }
    }
}

/* 8 rows of one column as float32. ``t`` is the rows' 8-bit mask times the byte size of one
 * table entry (32; float16: 16): the table offset, and popcount(t) is the number of values. */
static inline __attribute__((always_inline)) __m256 chunk8(uint64_t t, const char *p, const int DTYPE) {
    if (DTYPE == DT_F32) {
        const __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps((const float *)p),
                                                  _mm256_load_si256((const __m256i *)((const char *)f32_perm + t)));
        return _mm256_and_ps(v, _mm256_load_ps((const float *)((const char *)f32_keep + t)));
    }
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (DTYPE == DT_F16)
        return _mm256_cvtph_ps(_mm_shuffle_epi8(h, _mm_load_si128((const __m128i *)((const char *)f16_ctrl + t))));
    const __m256i both = _mm256_broadcastsi128_si256(h);
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(both, _mm256_load_si256((const __m256i *)((const char *)bf16_ctrl + t))));
}

/* One 64-row word of one column: acc[s] += rows 8s..8s+7 times xb. Each byte of the word is
 * taken already scaled to a table offset (one shift and one AND), its popcount unchanged. */
static inline __attribute__((always_inline)) void word8(uint64_t word, const char *p, __m256 xb, __m256 *acc,
                                                        const int DTYPE) {
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    const int scale = DTYPE == DT_F16 ? 4 : 5; /* log2 of a table entry's bytes */
    const uint64_t field = 0xffull << scale;
    if (word == ~0ull) { /* 64 rows all stored (a dense column, e.g. activation sparsity only): no shuffles */
        for (int s = 0; s < 8; s++) {
            __m256 v;
            if (DTYPE == DT_F32) v = _mm256_loadu_ps((const float *)p + 8 * s);
            else if (DTYPE == DT_F16) v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + 8 * s)));
            else v = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + 8 * s))), 16));
            acc[s] = _mm256_fmadd_ps(v, xb, acc[s]);
        }
        return;
    }
    for (int s = 0; s < 8; s++) {
        const uint64_t t = (s ? word >> (8 * s - scale) : word << scale) & field;
        acc[s] = _mm256_fmadd_ps(chunk8(t, p, DTYPE), xb, acc[s]);
        p += __builtin_popcountll(t) * esize;
    }
}

/* Variant 4: one 64-row tile, sums in registers, written to out[0:64]. */
static inline __attribute__((always_inline)) void regs8(const uint64_t *bitmaps, const char *values,
                                                        const int64_t *offsets, const int32_t *active,
                                                        int64_t n_active, const float *x, float *out, const int DTYPE,
                                                        const int PF) {
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    __m256 acc[8];
    for (int s = 0; s < 8; s++) acc[s] = _mm256_setzero_ps();
    for (int64_t a = 0; a < n_active; a++) {
        if (PF && a + FAR8 < n_active) {
            const char *f = values + offsets[active[a + FAR8]] * esize;
            for (int c = 0; c <= 32 * esize; c += 64) __builtin_prefetch(f + c, 0, 1); /* a half-full segment's lines */
        }
        const int64_t j = active[a];
        word8(bitmaps[j], values + offsets[j] * esize, _mm256_set1_ps(x[j]), acc, DTYPE);
    }
    for (int s = 0; s < 8; s++) _mm256_storeu_ps(out + 8 * s, acc[s]);
}

/* Where a strip's software prefetch reads: column ``g``'s values in ``words`` equal slices (bytes per
 * slice rounded up), one slice per word of the pass, so the prefetches keep pace with the reads. */
typedef struct {
    const char *values;
    const uint64_t *bitmaps;
    int64_t slice;
} ahead8;

static inline ahead8 ahead_of(const uint64_t *bitmaps, const char *values, const int64_t *offsets, int64_t esize,
                              int64_t words, int64_t g) {
    const ahead8 h = {values + offsets[g] * esize, bitmaps + g * words,
                      ((offsets[g + 1] - offsets[g]) * esize + words - 1) / words};
    return h;
}

static inline void prefetch_slice(ahead8 h, int64_t w) {
    for (int64_t c = 0; c < h.slice; c += 64) __builtin_prefetch(h.values + w * h.slice + c, 0, 3);
    if ((w & 7) == 0) { /* the bitmap words of the next 8 slices: both ends, the words need not start a line */
        __builtin_prefetch(h.bitmaps + w, 0, 3);
        __builtin_prefetch(h.bitmaps + w + 7, 0, 3);
    }
}

/* Variant 5: a strip of words * 64 rows, sums in acc (L1), two columns per pass. With PF, each pass also
 * prefetches the two columns FAR5 ahead, a slice per word. Prefetching their whole segments at the start
 * of a pass instead (dozens of misses at once, then none) ran 1.08-1.65x slower at 7B shapes on an AVX2
 * EPYC, in float32 and bfloat16 (docs/kernel.md). */
#define FAR5 6
static inline __attribute__((always_inline)) void strip8(const uint64_t *bitmaps, const char *values,
                                                         const int64_t *offsets, int64_t words, const int32_t *active,
                                                         int64_t n_active, const float *x, float *acc, const int DTYPE,
                                                         const int PF) {
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    memset(acc, 0, (size_t)words * 256);
    for (int64_t a = 0; a < n_active; a += 2) {
        const int two = a + 1 < n_active;
        const int64_t j0 = active[a], j1 = two ? active[a + 1] : j0;
        const int64_t g0 = active[a + FAR5 < n_active ? a + FAR5 : n_active - 1];
        const int64_t g1 = active[a + FAR5 + 1 < n_active ? a + FAR5 + 1 : n_active - 1];
        const ahead8 h0 = ahead_of(bitmaps, values, offsets, esize, words, g0);
        const ahead8 h1 = ahead_of(bitmaps, values, offsets, esize, words, g1);
        const uint64_t *b0 = bitmaps + j0 * words, *b1 = bitmaps + j1 * words;
        const char *p0 = values + offsets[j0] * esize, *p1 = values + offsets[j1] * esize;
        const __m256 x0 = _mm256_set1_ps(x[j0]), x1 = _mm256_set1_ps(x[j1]);
        for (int64_t w = 0; w < words; w++) {
            if (PF) {
                prefetch_slice(h0, w);
                prefetch_slice(h1, w);
            }
            __m256 s[8];
            for (int c = 0; c < 8; c++) s[c] = _mm256_load_ps(acc + 64 * w + 8 * c);
            word8(b0[w], p0, x0, s, DTYPE);
            if (two) word8(b1[w], p1, x1, s, DTYPE);
            for (int c = 0; c < 8; c++) _mm256_store_ps(acc + 64 * w + 8 * c, s[c]);
            p0 += __builtin_popcountll(b0[w]) * esize;
            p1 += __builtin_popcountll(b1[w]) * esize;
        }
    }
}

/* CALL(BG) with BG = min(rows, 6) as a constant (each count its own register allocation). */
#define DUOGPT_BY_ROWS(rows, CALL)                  \
    do {                                            \
        switch ((rows) < 6 ? (rows) : 6) {          \
        case 1: CALL(1); break;                     \
        case 2: CALL(2); break;                     \
        case 3: CALL(3); break;                     \
        case 4: CALL(4); break;                     \
        case 5: CALL(5); break;                     \
        default: CALL(6);                           \
        }                                           \
    } while (0)

/* Batches of 2..6 rows, one pass: rows 16q..16q+15 of word w of every active column (two 8-row chunks,
 * expanded once) times BG batch rows, sums in 2 x BG registers; written to y. */
static inline __attribute__((always_inline)) void batch_pass(const uint64_t *bitmaps, int64_t words, int64_t w, int q,
                                                             const char *values, const int64_t *cursor,
                                                             const int32_t *active, int64_t n_active, const float *x,
                                                             int64_t k, float *y, int64_t n, int64_t rows_left,
                                                             int first, const int BG, const int DTYPE) {
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    const int scale = DTYPE == DT_F16 ? 4 : 5;
    const uint64_t field = 0xffull << scale, below = q ? ~0ull >> (64 - 16 * q) : 0;
    __m256 acc[2][6];
    for (int b = 0; b < BG; b++) { /* a later group of columns goes on from the sums so far: same order, same bits */
        float tmp[16] = {0};
        if (!first) memcpy(tmp, y + b * n, (size_t)(rows_left < 16 ? rows_left : 16) * sizeof(float));
        acc[0][b] = _mm256_loadu_ps(tmp);
        acc[1][b] = _mm256_loadu_ps(tmp + 8);
    }
    for (int64_t a = 0; a < n_active; a++) {
        const int64_t j = active[a];
        const uint64_t word = bitmaps[j * words + w];
        const char *p = values + (cursor[a] + __builtin_popcountll(word & below)) * esize;
        const uint64_t t0 = (word >> (16 * q) << scale) & field, t1 = (word >> (16 * q + 8) << scale) & field;
        const __m256 v0 = chunk8(t0, p, DTYPE), v1 = chunk8(t1, p + __builtin_popcountll(t0) * esize, DTYPE);
        for (int b = 0; b < BG; b++) {
            const __m256 xb = _mm256_broadcast_ss(x + b * k + j);
            acc[0][b] = _mm256_fmadd_ps(v0, xb, acc[0][b]);
            acc[1][b] = _mm256_fmadd_ps(v1, xb, acc[1][b]);
        }
    }
    for (int b = 0; b < BG; b++) {
        if (rows_left >= 16) {
            _mm256_storeu_ps(y + b * n, acc[0][b]);
            _mm256_storeu_ps(y + b * n + 8, acc[1][b]);
        } else {
            float tmp[16];
            _mm256_storeu_ps(tmp, acc[0][b]);
            _mm256_storeu_ps(tmp + 8, acc[1][b]);
            memcpy(y + b * n, tmp, (size_t)rows_left * sizeof(float));
        }
    }
}

#define GROUP_BYTES (160 << 10) /* a group of columns' segments, re-read by every pass, stay in L2 */

/* Columns in groups whose segments (the tile's whole height) fit GROUP_BYTES; per group, every 16 rows
 * of every word in one pass of all (up to 6) batch rows. A tile of thousands of rows (a strip) is then
 * read once from memory, each segment contiguously. */
static inline __attribute__((always_inline)) void batch_tile(const uint64_t *bitmaps, const char *values,
                                                             const int64_t *offsets, int64_t k, int64_t words,
                                                             const int32_t *active, int64_t n_active, const float *x,
                                                             int64_t batch, int64_t *cursor, float *y, int64_t n,
                                                             int64_t count, const int DTYPE) {
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    for (int64_t a0 = 0, a1; a0 < n_active; a0 = a1) {
        int64_t bytes = 0;
        for (a1 = a0; a1 < n_active && bytes < GROUP_BYTES; a1++) {
            cursor[a1] = offsets[active[a1]];
            bytes += (offsets[active[a1] + 1] - cursor[a1]) * esize;
        }
        const int64_t m = a1 - a0;
        const int first = a0 == 0;
        for (int64_t w = 0; w < words && 64 * w < count; w++) {
            for (int q = 0; q < 4 && 64 * w + 16 * q < count; q++) {
                const int64_t r = 64 * w + 16 * q, left = count - r;
                for (int64_t b0 = 0; b0 < batch; b0 += 6) {
                    const float *xb = x + b0 * k;
                    float *yb = y + b0 * n + r;
#define DUOGPT_PASS(BG) \
    batch_pass(bitmaps, words, w, q, values, cursor + a0, active + a0, m, xb, k, yb, n, left, first, BG, DTYPE)
                    DUOGPT_BY_ROWS(batch - b0, DUOGPT_PASS);
#undef DUOGPT_PASS
                }
            }
            for (int64_t a = a0; a < a1; a++) cursor[a] += __builtin_popcountll(bitmaps[active[a] * words + w]);
        }
    }
}

/* Batches of 7..16 rows: active columns in panels of PANEL; per panel and 64-row word, every column's word is
 * expanded once into D (PANEL x 64 float32, in L1), then multiplied into all batch rows by a dense kernel:
 * 16 rows x up to 6 batch rows of sums in 12 registers, two loads from D and 6 broadcasts per 12 FMAs. A
 * later panel goes on from the sums so far, so every row is summed in the active columns' order with one
 * rounding per add: the bits of the original batched path. Each value is read from memory once. */
#define PANEL 64

/* Word w of the panel's columns expanded into D[c * 64 + r]; each cursor moves on to word w + 1, whose
 * values are prefetched (the next call reads them). */
static inline __attribute__((always_inline)) void expand_panel(const uint64_t *bitmaps, int64_t words, int64_t w,
                                                               const char *values, int64_t *cursor,
                                                               const int32_t *active, int64_t m, float *D,
                                                               const int DTYPE) {
    const int64_t esize = DTYPE == DT_F32 ? 4 : 2;
    const int scale = DTYPE == DT_F16 ? 4 : 5;
    const uint64_t field = 0xffull << scale;
    for (int64_t c = 0; c < m; c++) {
        const uint64_t *bm = bitmaps + active[c] * words + w, word = bm[0];
        const char *p = values + cursor[c] * esize;
        for (int s = 0; s < 8; s++) {
            const uint64_t t = (s ? word >> (8 * s - scale) : word << scale) & field;
            _mm256_store_ps(D + 64 * c + 8 * s, chunk8(t, p, DTYPE));
            p += __builtin_popcountll(t) * esize;
        }
        cursor[c] += __builtin_popcountll(word);
        if (w + 1 < words)
            for (int64_t e = 0; e < __builtin_popcountll(bm[1]) * esize; e += 64) __builtin_prefetch(p + e, 0, 3);
    }
}

/* Sums of rows r..r+15 (``rows`` of them) for BG batch rows: y[b * ld + r] (+)= D rows times x[b * k + j]. */
static inline __attribute__((always_inline)) void panel_rows(const float *D, int64_t m, const int32_t *active,
                                                             const float *x, int64_t k, int q, float *y, int64_t ld,
                                                             int64_t rows, int first, const int BG) {
    __m256 acc[12];
#pragma GCC unroll 6
    for (int b = 0; b < BG; b++) {
        if (first) {
            acc[2 * b] = acc[2 * b + 1] = _mm256_setzero_ps();
        } else if (rows >= 16) {
            acc[2 * b] = _mm256_loadu_ps(y + b * ld);
            acc[2 * b + 1] = _mm256_loadu_ps(y + b * ld + 8);
        } else {
            float tmp[16] = {0};
            memcpy(tmp, y + b * ld, (size_t)rows * sizeof(float));
            acc[2 * b] = _mm256_loadu_ps(tmp);
            acc[2 * b + 1] = _mm256_loadu_ps(tmp + 8);
        }
    }
    for (int64_t c = 0; c < m; c++) {
        const __m256 d0 = _mm256_load_ps(D + 64 * c + 16 * q), d1 = _mm256_load_ps(D + 64 * c + 16 * q + 8);
        const float *xj = x + active[c];
#pragma GCC unroll 6
        for (int b = 0; b < BG; b++) {
            const __m256 xb = _mm256_broadcast_ss(xj + b * k);
            acc[2 * b] = _mm256_fmadd_ps(d0, xb, acc[2 * b]);
            acc[2 * b + 1] = _mm256_fmadd_ps(d1, xb, acc[2 * b + 1]);
        }
    }
#pragma GCC unroll 6
    for (int b = 0; b < BG; b++) {
        if (rows >= 16) {
            _mm256_storeu_ps(y + b * ld, acc[2 * b]);
            _mm256_storeu_ps(y + b * ld + 8, acc[2 * b + 1]);
        } else {
            float tmp[16];
            _mm256_storeu_ps(tmp, acc[2 * b]);
            _mm256_storeu_ps(tmp + 8, acc[2 * b + 1]);
            memcpy(y + b * ld, tmp, (size_t)rows * sizeof(float));
        }
    }
}

/* One tile (any height; a strip's columns each read as one forward run, a panel at a time) into y. */
static inline __attribute__((always_inline)) void panel_tile(const uint64_t *bitmaps, const char *values,
                                                             const int64_t *offsets, int64_t k, int64_t words,
                                                             const int32_t *active, int64_t n_active, const float *x,
                                                             int64_t batch, int64_t *cursor, float *y, int64_t ld,
                                                             int64_t count, const int DTYPE) {
    float D[PANEL * 64] __attribute__((aligned(32)));
    for (int64_t a0 = 0; a0 < n_active; a0 += PANEL) {
        const int64_t m = n_active - a0 < PANEL ? n_active - a0 : PANEL;
        for (int64_t c = 0; c < m; c++) cursor[c] = offsets[active[a0 + c]];
        for (int64_t w = 0; w < words && 64 * w < count; w++) {
            expand_panel(bitmaps, words, w, values, cursor, active + a0, m, D, DTYPE);
            for (int q = 0; q < 4 && 64 * w + 16 * q < count; q++) {
                const int64_t r = 64 * w + 16 * q, rows = count - r;
                for (int64_t b0 = 0; b0 < batch; b0 += 6) {
#define DUOGPT_ROWS(BG) panel_rows(D, m, active + a0, x + b0 * k, k, q, y + b0 * ld + r, ld, rows, a0 == 0, BG)
                    DUOGPT_BY_ROWS(batch - b0, DUOGPT_ROWS);
#undef DUOGPT_ROWS
                }
            }
        }
    }
}

#define DUOGPT_BY_DTYPE(CALL_F32, CALL_F16, CALL_BF16) \
    do {                                              \
        if (dtype == DT_F32) CALL_F32;                \
        else if (dtype == DT_F16) CALL_F16;           \
        else CALL_BF16;                               \
    } while (0)

/* Batched rows on AVX2: one tile (any height), rows row0.. of y (batch x n). Up to AVX2_FEW_ROWS rows every batch
 * row's sums fit in registers in one pass and each expanded chunk is used straight from its register (batch_tile);
 * more rows would expand every chunk once per 6 rows, so they take the panels (panel_tile), as do fewer rows when
 * ``panels`` says so (on wide strips the panels are faster at 2-6 rows too: docs/kernel.md). Returns 0. */
int duogpt_avx2_batch(const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets, int64_t k,
                      int64_t words, const int32_t *active, int64_t n_active, const float *x, int64_t batch,
                      int64_t *cursor, float *y, int64_t n, int64_t count, int panels) {
    const char *v = (const char *)values;
#define DUOGPT_TILE(FN, DT) FN(bitmaps, v, offsets, k, words, active, n_active, x, batch, cursor, y, n, count, DT)
    if (n_active == 0) /* no column to add: the sums are zero (neither path writes y then) */
        for (int64_t b = 0; b < batch; b++) memset(y + b * n, 0, (size_t)count * sizeof(float));
    else if (batch <= AVX2_FEW_ROWS && !panels)
        DUOGPT_BY_DTYPE(DUOGPT_TILE(batch_tile, DT_F32), DUOGPT_TILE(batch_tile, DT_F16),
                        DUOGPT_TILE(batch_tile, DT_BF16));
    else
        DUOGPT_BY_DTYPE(DUOGPT_TILE(panel_tile, DT_F32), DUOGPT_TILE(panel_tile, DT_F16),
                        DUOGPT_TILE(panel_tile, DT_BF16));
#undef DUOGPT_TILE
    return 0;
}

int duogpt_avx2_tile(int v, int pf, const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets,
                     int64_t words, const int32_t *active, int64_t n_active, const float *x, float *acc, float *out,
                     int64_t count) {
    const char *vals = (const char *)values;
    if (v == 4) {
        if (words != 1) return -1;
        float *dst = count == 64 ? out : acc;
        if (pf)
            DUOGPT_BY_DTYPE(regs8(bitmaps, vals, offsets, active, n_active, x, dst, DT_F32, 1),
                            regs8(bitmaps, vals, offsets, active, n_active, x, dst, DT_F16, 1),
                            regs8(bitmaps, vals, offsets, active, n_active, x, dst, DT_BF16, 1));
        else
            DUOGPT_BY_DTYPE(regs8(bitmaps, vals, offsets, active, n_active, x, dst, DT_F32, 0),
                            regs8(bitmaps, vals, offsets, active, n_active, x, dst, DT_F16, 0),
                            regs8(bitmaps, vals, offsets, active, n_active, x, dst, DT_BF16, 0));
        if (dst != out) memcpy(out, acc, (size_t)count * sizeof(float));
        return 0;
    }
    if (v == 5) {
        if (pf)
            DUOGPT_BY_DTYPE(strip8(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_F32, 1),
                            strip8(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_F16, 1),
                            strip8(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_BF16, 1));
        else
            DUOGPT_BY_DTYPE(strip8(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_F32, 0),
                            strip8(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_F16, 0),
                            strip8(bitmaps, vals, offsets, words, active, n_active, x, acc, DT_BF16, 0));
        memcpy(out, acc, (size_t)count * sizeof(float));
        return 0;
    }
    return -1;
}

int duogpt_avx2_variants(void) { return (1 << 4) | (1 << 5); }
#else
int duogpt_avx2_tile(int v, int pf, const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets,
                     int64_t words, const int32_t *active, int64_t n_active, const float *x, float *acc, float *out,
                     int64_t count) {
    (void)v, (void)pf, (void)bitmaps, (void)values, (void)dtype, (void)offsets, (void)words, (void)active;
    (void)n_active, (void)x, (void)acc, (void)out, (void)count;
    return -1;
}

int duogpt_avx2_batch(const uint64_t *bitmaps, const void *values, int dtype, const int64_t *offsets, int64_t k,
                      int64_t words, const int32_t *active, int64_t n_active, const float *x, int64_t batch,
                      int64_t *cursor, float *y, int64_t n, int64_t count, int panels) {
    (void)bitmaps, (void)values, (void)dtype, (void)offsets, (void)k, (void)words, (void)active, (void)n_active;
    (void)x, (void)batch, (void)cursor, (void)y, (void)n, (void)count, (void)panels;
    return -1;
}

int duogpt_avx2_variants(void) { return 0; }
#endif
