/* Dense product of a few decode rows with a row-major weight: y[b, r] = sum_j W[r, j] x[b, j], W (n, k) in
 * float32, float16 or bfloat16 (dtype code), x (batch, k) and y (batch, n) float32. Each step's four weight
 * rows are read from memory once and used from the caches for every batch row.
 *
 * What the sparse runtime uses for the linears it keeps dense at decode (the LM head: 49152 x 576
 * float32 on the default model, 32000 x 4096 bfloat16 at 7B). On the 2-core AVX2 EPYC measured, torch's
 * one-row product read those at 12 and 19 GB/s of about 30 (9.3 and 13.3 ms a call);
 * this one keeps four rows' sums in registers, widens 16-bit values in registers, and lets the threads
 * split the rows: 26-33 GB/s in isolation, 5.8 and 8.3 ms in a decode step. Each row's products are summed
 * in lanes and then across them, so results differ from torch's in the last bits.
 */
#include <stdint.h>
#include "common.h"

#ifndef DENSE_ROWS
#define DENSE_ROWS 4 /* rows per step: four independent chains of multiply-adds */
#endif

/* The vector unit's width and operations: 16 lanes (AVX-512), 8 (AVX2), or none. */
#if defined(__AVX512F__)
#define VLANES 16
typedef __m512 vec;
#define VZERO() _mm512_setzero_ps()
#define VLOADX(p) _mm512_loadu_ps(p)
#define VLOADW(w, i, dtype) load16(w, i, dtype)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define VLANES 8
typedef __m256 vec;
static float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#define VZERO() _mm256_setzero_ps()
#define VLOADX(p) _mm256_loadu_ps(p)
#define VLOADW(w, i, dtype) load8(w, i, dtype)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSUM(v) sum8(v)
#else
#define VLANES 0
#endif

/* y[0:rows] = rows r0 .. r0 + rows - 1 of W times x (rows <= DENSE_ROWS): vectors over k, then the tail. */
static void rows_dot(const void *w, int dtype, int64_t k, int64_t r0, int64_t rows, const float *x, float *y) {
    float sums[DENSE_ROWS] = {0.0f};
    int64_t j = 0;
#if VLANES
    vec acc[DENSE_ROWS];
    for (int i = 0; i < DENSE_ROWS; i++) acc[i] = VZERO();
    for (; j + VLANES <= k; j += VLANES) {
        const vec xv = VLOADX(x + j);
        for (int i = 0; i < rows; i++) acc[i] = VFMA(VLOADW(w, (r0 + i) * k + j, dtype), xv, acc[i]);
    }
    for (int i = 0; i < rows; i++) sums[i] = VSUM(acc[i]);
#endif
    for (int i = 0; i < rows; i++) {
        for (int64_t t = j; t < k; t++) sums[i] += load_scalar(w, (r0 + i) * k + t, dtype) * x[t];
        y[i] = sums[i];
    }
}

/* y = x W^T for ``batch`` rows x. Returns 0 on success, -1 on bad arguments. */
int duogpt_dense_row(const void *w, int dtype, int64_t n, int64_t k, const float *x, int64_t batch, float *y,
                     int nthreads) {
    if (dtype < 0 || dtype > 2 || n < 0 || k < 0 || batch < 1) return -1;
    const int64_t steps = (n + DENSE_ROWS - 1) / DENSE_ROWS;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (steps > 1 && nthreads > 1)
    for (int64_t s = 0; s < steps; s++) {
        const int64_t r0 = s * DENSE_ROWS, rows = n - r0 < DENSE_ROWS ? n - r0 : DENSE_ROWS;
        for (int64_t b = 0; b < batch; b++) rows_dot(w, dtype, k, r0, rows, x + b * k, y + b * n + r0);
    }
    return 0;
}
