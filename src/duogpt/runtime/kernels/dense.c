/* Dense product of one decode row with a row-major weight: y[r] = sum_j W[r, j] x[j], W (n, k) in
 * float32, float16 or bfloat16 (dtype code), x and y float32.
 *
 * What the sparse runtime uses for the linears it keeps dense at decode (the LM head: 49152 x 576
 * float32 on the default model, 32000 x 4096 bfloat16 at 7B). On the 2-core AVX2 EPYC measured, torch's
 * one-row product read those at 12 and 19 GB/s of about 30 (9.3 and 13.3 ms a call);
 * this one keeps four rows' sums in registers, widens 16-bit values in registers, and lets the threads
 * split the rows: 28-30 GB/s in isolation, 5.8 and 8.3 ms in a decode step. Each row's products are summed
 * in lanes and then across them, so results differ from torch's in the last bits.
 */
#include <stdint.h>
#include "common.h"

#ifndef DENSE_ROWS
#define DENSE_ROWS 4 /* rows per step: four independent chains of multiply-adds */
#endif

#if defined(__AVX512F__)
static void rows_dot(const void *w, int dtype, int64_t k, int64_t r0, int64_t rows, const float *x, float *y) {
    __m512 acc[DENSE_ROWS];
    for (int i = 0; i < DENSE_ROWS; i++) acc[i] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        const __m512 xv = _mm512_loadu_ps(x + j);
        for (int i = 0; i < rows; i++) acc[i] = _mm512_fmadd_ps(load16(w, (r0 + i) * k + j, dtype), xv, acc[i]);
    }
    for (int i = 0; i < rows; i++) {
        float s = _mm512_reduce_add_ps(acc[i]);
        for (int64_t t = j; t < k; t++) s += load_scalar(w, (r0 + i) * k + t, dtype) * x[t];
        y[i] = s;
    }
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
static float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static void rows_dot(const void *w, int dtype, int64_t k, int64_t r0, int64_t rows, const float *x, float *y) {
    __m256 acc[DENSE_ROWS];
    for (int i = 0; i < DENSE_ROWS; i++) acc[i] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) {
        const __m256 xv = _mm256_loadu_ps(x + j);
        for (int i = 0; i < rows; i++) acc[i] = _mm256_fmadd_ps(load8(w, (r0 + i) * k + j, dtype), xv, acc[i]);
    }
    for (int i = 0; i < rows; i++) {
        float s = sum8(acc[i]);
        for (int64_t t = j; t < k; t++) s += load_scalar(w, (r0 + i) * k + t, dtype) * x[t];
        y[i] = s;
    }
}
#else
static void rows_dot(const void *w, int dtype, int64_t k, int64_t r0, int64_t rows, const float *x, float *y) {
    for (int i = 0; i < rows; i++) {
        float s = 0.0f;
        for (int64_t t = 0; t < k; t++) s += load_scalar(w, (r0 + i) * k + t, dtype) * x[t];
        y[i] = s;
    }
}
#endif

/* y = W x for one row x. Returns 0 on success, -1 on bad arguments. */
int duogpt_dense_row(const void *w, int dtype, int64_t n, int64_t k, const float *x, float *y, int nthreads) {
    if (dtype < 0 || dtype > 2 || n < 0 || k < 0) return -1;
    const int64_t steps = (n + DENSE_ROWS - 1) / DENSE_ROWS;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (steps > 1 && nthreads > 1)
    for (int64_t s = 0; s < steps; s++) {
        const int64_t r0 = s * DENSE_ROWS, rows = n - r0 < DENSE_ROWS ? n - r0 : DENSE_ROWS;
        rows_dot(w, dtype, k, r0, rows, x, y + r0);
    }
    return 0;
}
