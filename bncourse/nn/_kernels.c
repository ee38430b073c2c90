/* Fused batch-norm kernels for bncourse.nn.fused: C with OpenMP, in torch's own thread pool.
 *
 * Compiled at the first fused call by bncourse/nn/_compile.py, twice: with
 * scalar = float (names ending _f32) and scalar = double (_f64). The shared
 * library is linked against the OpenMP runtime torch itself loaded, so these
 * parallel loops run on the same threads as torch's operators: a second pool
 * would fight torch's threads, which spin for a while after each operator.
 *
 * Layouts of an (N, C, ...) tensor, as in _as_layout (fused.py):
 *   planes (A, C, B): contiguous (N, C, H, W), A = N, B = H * W;
 *   rows   (R, C):    (N, C) or channels-last (N, H, W, C), R = N * H * W.
 *
 * Statistics: mean and M2 (sum of squared deviations) of a chunk that stays
 * in cache, two vectorized loops over it, merged into the running result with
 * Chan et al.'s pairwise update, in double:
 *   M2 += M2_chunk + delta^2 * n * n_chunk / (n + n_chunk).
 * Memory is read once and no sum of squares grows with the number of values.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef scalar
#define scalar float
#define FN(name) name##_f32
#endif

enum { CHUNK = 1024, ROW_CHUNK = 64 };

/* This thread's index and the team's size inside a parallel region (0 and 1 without OpenMP). */
static inline int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int thread_count(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Chan's merge of a chunk (n values, mean chunk_mean, M2 chunk_m2) into (count, mean, m2). */
static inline void merge(double *count, double *mean, double *m2, double n, double chunk_mean, double chunk_m2) {
    double total = *count + n, delta = chunk_mean - *mean;
    *mean += delta * n / total;
    *m2 += chunk_m2 + delta * delta * *count * n / total;
    *count = total;
}

/* Blend a channel's batch mean and biased variance (over m values) into the running buffers
 * (NULL: none): r += momentum * (stat - r), with the unbiased variance var * m / (m - 1), as torch.
 * A batch of one value per channel moves nothing. */
static inline void update_running(scalar *running_mean, scalar *running_var, int64_t k, double mean, double var,
                                  double m, double momentum) {
    if (m <= 1) return;
    if (running_mean) running_mean[k] = (scalar)(running_mean[k] + momentum * (mean - running_mean[k]));
    if (running_var) running_var[k] = (scalar)(running_var[k] + momentum * (var * m / (m - 1) - running_var[k]));
}

/* The statistics a training forward hands back: mean, biased var, inv_std (NULL: not wanted). */
typedef struct {
    scalar *mean, *var, *inv_std;
} FN(stats_out);

/* Per-channel coefficients of the output, and the statistics handed back (mean, biased var,
 * inv_std, running buffers), for column k from its mean and M2 over R rows. */
static inline void FN(output_coefficients)(int64_t k, double mean, double m2, double R, const scalar *weight,
                                           const scalar *bias, double eps, scalar *alpha, scalar *shift,
                                           FN(stats_out) stats, scalar *running_mean, scalar *running_var,
                                           double momentum) {
    double v = m2 / R, is = 1.0 / sqrt(v + eps), a = (weight ? weight[k] : 1.0) * is;
    *alpha = (scalar)a;
    *shift = (scalar)((bias ? bias[k] : 0.0) - mean * a);
    stats.mean[k] = (scalar)mean;
    stats.var[k] = (scalar)v;
    if (stats.inv_std) stats.inv_std[k] = (scalar)is;
    update_running(running_mean, running_var, k, mean, v, R, momentum);
}

/* Per-channel coefficients of dx = k * dout + coef * x + const for column c, from the sums.
 * frozen: mean and inv_std are constants (evaluation from the running statistics), so
 * dx = k * dout; else they are the batch's and dx carries their derivative too. */
static inline void FN(input_grad_coefficients)(int64_t c, double sum_d, double sum_dx, double m, const scalar *weight,
                                               const scalar *mean, const scalar *inv_std, int frozen, scalar *kk,
                                               scalar *cc, scalar *sc, scalar *dgamma_out, scalar *dbeta_out) {
    double is = inv_std[c], dg = sum_dx * is, kv = (weight ? weight[c] : 1.0) * is;
    double coef = frozen ? 0.0 : -kv * is * dg / m;
    *kk = (scalar)kv;
    *cc = (scalar)coef;
    *sc = (scalar)(frozen ? 0.0 : -kv * sum_d / m - coef * (double)mean[c]);
    dgamma_out[c] = (scalar)dg;
    dbeta_out[c] = (scalar)sum_d;
}

/* Mean and M2 of channel c of x (A, C, B), chunk by chunk of whole planes. */
static void FN(channel_moments)(const scalar *x, int64_t A, int64_t C, int64_t B, int64_t c,
                                double *mean, double *m2) {
    double count = 0, mu = 0, acc = 0;
    int64_t planes = B >= CHUNK ? 1 : CHUNK / B; /* small planes are merged a few at a time */
    for (int64_t a0 = 0; a0 < A; a0 += planes) {
        int64_t a1 = a0 + planes < A ? a0 + planes : A;
        scalar s = 0, q = 0;
        for (int64_t a = a0; a < a1; a++) {
            const scalar *p = x + (a * C + c) * B;
#pragma omp simd reduction(+ : s)
            for (int64_t b = 0; b < B; b++) s += p[b];
        }
        scalar chunk_mean = s / (scalar)((a1 - a0) * B);
        for (int64_t a = a0; a < a1; a++) { /* the chunk is in cache now */
            const scalar *p = x + (a * C + c) * B;
#pragma omp simd reduction(+ : q)
            for (int64_t b = 0; b < B; b++) q += (p[b] - chunk_mean) * (p[b] - chunk_mean);
        }
        merge(&count, &mu, &acc, (double)((a1 - a0) * B), chunk_mean, q);
    }
    *mean = mu;
    *m2 = acc;
}

/* Training forward, planes: statistics then output, one channel at a time, so the
 * output pass reads the channel from cache. weight and bias may be NULL (affine=False);
 * mean, the biased var and (where inv_std is not NULL) 1 / sqrt(var + eps) come back per
 * channel (computed in double), and the running buffers, where given, are updated with them. */
void FN(forward_planes)(const scalar *x, scalar *out, int64_t A, int64_t C, int64_t B, const scalar *weight,
                        const scalar *bias, double eps, scalar *mean, scalar *var, scalar *inv_std,
                        scalar *running_mean, scalar *running_var, double momentum, int threads) {
    FN(stats_out) stats = {mean, var, inv_std};
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t c = 0; c < C; c++) {
        double mu, m2;
        FN(channel_moments)(x, A, C, B, c, &mu, &m2);
        scalar al, sh;
        FN(output_coefficients)(c, mu, m2, (double)(A * B), weight, bias, eps, &al, &sh, stats, running_mean,
                                running_var, momentum);
        for (int64_t a = 0; a < A; a++) {
            const scalar *p = x + (a * C + c) * B;
            scalar *o = out + (a * C + c) * B;
#pragma omp simd
            for (int64_t b = 0; b < B; b++) o[b] = p[b] * al + sh;
        }
    }
}

/* k[j] = weight * inv_std of column k0 + j, for k0 <= column < k1: with frozen statistics,
 * dx = k * dout (the same value input_grad_coefficients gives). */
static void FN(frozen_input_scale)(const scalar *weight, const scalar *inv_std, int64_t k0, int64_t k1, scalar *k) {
    for (int64_t j = 0; j < k1 - k0; j++) k[j] = (scalar)((weight ? weight[k0 + j] : 1.0) * (double)inv_std[k0 + j]);
}

/* Backward, planes: per channel, dbeta = sum(dout) and
 * dgamma = inv_std * sum(dout * (x - mean)), then at once, from cache,
 * dx = k * dout + coef * x + const (skipped when dx is NULL). frozen: the
 * statistics were the running ones (evaluation), constants to differentiate. */
void FN(backward_planes)(const scalar *dout, const scalar *x, scalar *dx, int64_t A, int64_t C, int64_t B,
                         const scalar *weight, const scalar *mean, const scalar *inv_std, int frozen, scalar *dgamma,
                         scalar *dbeta, int threads) {
    double m = (double)(A * B);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t c = 0; c < C; c++) {
        scalar mu = mean[c];
        /* frozen: dx = k * dout needs none of the sums, so it is written in the same pass */
        scalar k_frozen;
        FN(frozen_input_scale)(weight, inv_std, c, c + 1, &k_frozen);
        double sum_d = 0, sum_dx = 0;
        for (int64_t a = 0; a < A; a++) {
            const scalar *g = dout + (a * C + c) * B, *v = x + (a * C + c) * B;
            scalar sd = 0, sdx = 0;
            if (frozen && dx) {
                scalar *d = dx + (a * C + c) * B;
#pragma omp simd reduction(+ : sd, sdx)
                for (int64_t b = 0; b < B; b++) {
                    sd += g[b];
                    sdx += g[b] * (v[b] - mu);
                    d[b] = k_frozen * g[b];
                }
            } else {
#pragma omp simd reduction(+ : sd, sdx)
                for (int64_t b = 0; b < B; b++) {
                    sd += g[b];
                    sdx += g[b] * (v[b] - mu);
                }
            }
            sum_d += sd;
            sum_dx += sdx;
        }
        scalar kc, cc, sc;
        FN(input_grad_coefficients)(c, sum_d, sum_dx, m, weight, mean, inv_std, frozen, &kc, &cc, &sc, dgamma,
                                    dbeta);
        if (!dx || frozen) continue;
        for (int64_t a = 0; a < A; a++) {
            const scalar *g = dout + (a * C + c) * B, *v = x + (a * C + c) * B;
            scalar *d = dx + (a * C + c) * B;
#pragma omp simd
            for (int64_t b = 0; b < B; b++) d[b] = kc * g[b] + cc * v[b] + sc;
        }
    }
}

/* Rows r0:r1, columns k0:k1 of x (R, C): mean and M2 of column k0 + j into mean[j], m2[j] (double).
 * s and q: scratch of k1 - k0 scalars. */
static void FN(rows_moments)(const scalar *x, int64_t C, int64_t r0, int64_t r1, int64_t k0, int64_t k1,
                             double *mean, double *m2, scalar *s, scalar *q) {
    int64_t width = k1 - k0;
    double count = 0;
    for (int64_t j = 0; j < width; j++) mean[j] = m2[j] = 0;
    for (int64_t lo = r0; lo < r1; lo += ROW_CHUNK) {
        int64_t hi = lo + ROW_CHUNK < r1 ? lo + ROW_CHUNK : r1;
        for (int64_t j = 0; j < width; j++) s[j] = q[j] = 0;
        for (int64_t r = lo; r < hi; r++) {
            const scalar *row = x + r * C + k0;
#pragma omp simd
            for (int64_t j = 0; j < width; j++) s[j] += row[j];
        }
        for (int64_t j = 0; j < width; j++) s[j] /= (scalar)(hi - lo);
        for (int64_t r = lo; r < hi; r++) {
            const scalar *row = x + r * C + k0;
#pragma omp simd
            for (int64_t j = 0; j < width; j++) q[j] += (row[j] - s[j]) * (row[j] - s[j]);
        }
        for (int64_t j = 0; j < width; j++) {
            double c = count;
            merge(&c, &mean[j], &m2[j], (double)(hi - lo), s[j], q[j]);
        }
        count += (double)(hi - lo);
    }
}

/* Rows r0:r1, columns k0:k1: sum(dout) and sum(dout * (x - mean)) of column k0 + j into sum_d[j],
 * sum_dx[j] (double). sd and sdx: scratch of k1 - k0 scalars. Where dx is not NULL, also
 * dx = k * dout in the same pass (frozen statistics), k[j] belonging to column k0 + j. */
static void FN(rows_grad_sums)(const scalar *dout, const scalar *x, int64_t C, int64_t r0, int64_t r1, int64_t k0,
                               int64_t k1, const scalar *mean, double *sum_d, double *sum_dx, scalar *sd, scalar *sdx,
                               scalar *dx, const scalar *k) {
    int64_t width = k1 - k0;
    const scalar *mu = mean + k0;
    for (int64_t j = 0; j < width; j++) sum_d[j] = sum_dx[j] = 0;
    for (int64_t lo = r0; lo < r1; lo += ROW_CHUNK) {
        int64_t hi = lo + ROW_CHUNK < r1 ? lo + ROW_CHUNK : r1;
        for (int64_t j = 0; j < width; j++) sd[j] = sdx[j] = 0;
        for (int64_t r = lo; r < hi; r++) {
            const scalar *g = dout + r * C + k0, *v = x + r * C + k0;
            if (dx) {
                scalar *d = dx + r * C + k0;
#pragma omp simd
                for (int64_t j = 0; j < width; j++) {
                    sd[j] += g[j];
                    sdx[j] += g[j] * (v[j] - mu[j]);
                    d[j] = k[j] * g[j];
                }
                continue;
            }
#pragma omp simd
            for (int64_t j = 0; j < width; j++) {
                sd[j] += g[j];
                sdx[j] += g[j] * (v[j] - mu[j]);
            }
        }
        for (int64_t j = 0; j < width; j++) {
            sum_d[j] += sd[j];
            sum_dx[j] += sdx[j];
        }
    }
}

/* Rows r0:r1, columns k0:k1: out = x * alpha + shift, or dx = k * dout + alpha * x + shift when dout
 * is set; alpha[j], shift[j], k[j] belong to column k0 + j. */
static void FN(rows_affine)(const scalar *x, const scalar *dout, scalar *out, int64_t C, int64_t r0, int64_t r1,
                            int64_t k0, int64_t k1, const scalar *alpha, const scalar *shift, const scalar *k) {
    int64_t width = k1 - k0;
    for (int64_t r = r0; r < r1; r++) {
        const scalar *v = x + r * C + k0;
        scalar *o = out + r * C + k0;
        if (dout) {
            const scalar *g = dout + r * C + k0;
#pragma omp simd
            for (int64_t j = 0; j < width; j++) o[j] = k[j] * g[j] + alpha[j] * v[j] + shift[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < width; j++) o[j] = v[j] * alpha[j] + shift[j];
        }
    }
}

/* Training forward, rows. block > 0: few rows, so each thread takes blocks of `block` columns over
 * all rows, statistics then output while the block is in cache; its scratch is one block's worth.
 * block == 0: many rows (channels-last); every row holds every channel, so each thread reduces a
 * slice of rows, the slices are merged, then the output is a second pass. */
void FN(forward_rows)(const scalar *x, scalar *out, int64_t R, int64_t C, const scalar *weight, const scalar *bias,
                      double eps, scalar *mean_out, scalar *var_out, scalar *inv_std_out, scalar *running_mean,
                      scalar *running_var, double momentum, int64_t block, int threads) {
    FN(stats_out) stats = {mean_out, var_out, inv_std_out};
    if (block > 0) {
#pragma omp parallel num_threads(threads)
        {
            double *moments = malloc(2 * block * sizeof(double)); /* mean, M2 */
            scalar *s = malloc(4 * block * sizeof(scalar));       /* chunk sums (2), alpha, shift */
            scalar *alpha = s + 2 * block, *shift = s + 3 * block;
#pragma omp for schedule(static)
            for (int64_t kb = 0; kb < C; kb += block) {
                int64_t ke = kb + block < C ? kb + block : C;
                FN(rows_moments)(x, C, 0, R, kb, ke, moments, moments + block, s, s + block);
                for (int64_t j = 0; j < ke - kb; j++)
                    FN(output_coefficients)(kb + j, moments[j], moments[block + j], (double)R, weight, bias, eps,
                                            alpha + j, shift + j, stats, running_mean, running_var,
                                            momentum);
                FN(rows_affine)(x, NULL, out, C, 0, R, kb, ke, alpha, shift, NULL);
            }
            free(moments);
            free(s);
        }
        return;
    }
    double *part = malloc(3 * (size_t)threads * C * sizeof(double)); /* per slice: count, mean, M2 */
    scalar *alpha = malloc(2 * C * sizeof(scalar)), *shift = alpha + C;
    int used = 1;
#pragma omp parallel num_threads(threads)
    {
        int t = thread_index(), n = thread_count();
#pragma omp single
        used = n;
        int64_t r0 = R * t / n, r1 = R * (t + 1) / n;
        scalar *s = malloc(2 * C * sizeof(scalar));
        FN(rows_moments)(x, C, r0, r1, 0, C, part + (3 * t + 1) * C, part + (3 * t + 2) * C, s, s + C);
        for (int64_t k = 0; k < C; k++) part[3 * t * C + k] = (double)(r1 - r0);
        free(s);
    }
    for (int64_t k = 0; k < C; k++) {
        double count = 0, mu = 0, m2 = 0;
        for (int t = 0; t < used; t++)
            if (part[3 * t * C + k] > 0)
                merge(&count, &mu, &m2, part[3 * t * C + k], part[(3 * t + 1) * C + k], part[(3 * t + 2) * C + k]);
        FN(output_coefficients)(k, mu, m2, (double)R, weight, bias, eps, alpha + k, shift + k, stats,
                                running_mean, running_var, momentum);
    }
    free(part);
#pragma omp parallel num_threads(threads)
    {
        int t = thread_index(), n = thread_count();
        FN(rows_affine)(x, NULL, out, C, R * t / n, R * (t + 1) / n, 0, C, alpha, shift, NULL);
    }
    free(alpha);
}

/* Backward, rows, with the same two strategies as forward_rows. dx may be NULL; frozen as in
 * backward_planes. */
void FN(backward_rows)(const scalar *dout, const scalar *x, scalar *dx, int64_t R, int64_t C, const scalar *weight,
                       const scalar *mean, const scalar *inv_std, int frozen, scalar *dgamma_out, scalar *dbeta_out,
                       int64_t block, int threads) {
    double m = (double)R;
    if (block > 0) {
#pragma omp parallel num_threads(threads)
        {
            double *sums = malloc(2 * block * sizeof(double)); /* sum(dout), sum(dout * (x - mean)) */
            scalar *s = malloc(5 * block * sizeof(scalar));    /* chunk sums (2), k, coef, const */
            scalar *kk = s + 2 * block, *cc = s + 3 * block, *sc = s + 4 * block;
#pragma omp for schedule(static)
            for (int64_t kb = 0; kb < C; kb += block) {
                int64_t ke = kb + block < C ? kb + block : C;
                if (frozen) FN(frozen_input_scale)(weight, inv_std, kb, ke, kk);
                FN(rows_grad_sums)(dout, x, C, 0, R, kb, ke, mean, sums, sums + block, s, s + block,
                                   frozen ? dx : NULL, kk);
                for (int64_t j = 0; j < ke - kb; j++)
                    FN(input_grad_coefficients)(kb + j, sums[j], sums[block + j], m, weight, mean, inv_std, frozen,
                                                kk + j, cc + j, sc + j, dgamma_out, dbeta_out);
                if (dx && !frozen) FN(rows_affine)(x, dout, dx, C, 0, R, kb, ke, cc, sc, kk);
            }
            free(sums);
            free(s);
        }
        return;
    }
    double *part = malloc(2 * (size_t)threads * C * sizeof(double));
    scalar *kk = malloc(3 * C * sizeof(scalar)), *cc = kk + C, *sc = kk + 2 * C;
    if (frozen) FN(frozen_input_scale)(weight, inv_std, 0, C, kk);
    int used = 1;
#pragma omp parallel num_threads(threads)
    {
        int t = thread_index(), n = thread_count();
#pragma omp single
        used = n;
        scalar *s = malloc(2 * C * sizeof(scalar));
        FN(rows_grad_sums)(dout, x, C, R * t / n, R * (t + 1) / n, 0, C, mean, part + 2 * t * C,
                           part + (2 * t + 1) * C, s, s + C, frozen ? dx : NULL, kk);
        free(s);
    }
    for (int64_t k = 0; k < C; k++) {
        double sd = 0, sdx = 0;
        for (int t = 0; t < used; t++) {
            sd += part[2 * t * C + k];
            sdx += part[(2 * t + 1) * C + k];
        }
        FN(input_grad_coefficients)(k, sd, sdx, m, weight, mean, inv_std, frozen, kk + k, cc + k, sc + k,
                                    dgamma_out, dbeta_out);
    }
    free(part);
    if (dx && !frozen) {
#pragma omp parallel num_threads(threads)
        {
            int t = thread_index(), n = thread_count();
            FN(rows_affine)(x, dout, dx, C, R * t / n, R * (t + 1) / n, 0, C, cc, sc, kk);
        }
    }
    free(kk);
}

/* Evaluation: out = x * alpha + shift with per-channel coefficients, in one pass.
 * planes: x is (A, C, B); rows (B == 0): x is (A, C) rows. */
void FN(affine)(const scalar *x, scalar *out, int64_t A, int64_t C, int64_t B, const scalar *alpha,
                const scalar *shift, int threads) {
    if (B == 0) {
#pragma omp parallel num_threads(threads)
        {
            int t = thread_index(), n = thread_count();
            FN(rows_affine)(x, NULL, out, C, A * t / n, A * (t + 1) / n, 0, C, alpha, shift, NULL);
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = 0; p < A * C; p++) {
        scalar al = alpha[p % C], sh = shift[p % C];
        const scalar *v = x + p * B;
        scalar *o = out + p * B;
#pragma omp simd
        for (int64_t b = 0; b < B; b++) o[b] = v[b] * al + sh;
    }
}

/* Evaluation from the running statistics: alpha = weight / sqrt(running_var + eps),
 * shift = bias - running_mean * alpha per channel (weight, bias may be NULL), then
 * out = x * alpha + shift in one pass. */
void FN(evaluate)(const scalar *x, scalar *out, int64_t A, int64_t C, int64_t B, const scalar *running_mean,
                  const scalar *running_var, const scalar *weight, const scalar *bias, double eps, int threads) {
    /* alpha, shift, and 1 and 0 standing for a missing weight or bias: the loop below has no
     * branch, so it vectorizes (thousands of channels cost a square root and a division each). */
    scalar *coef = malloc(4 * C * sizeof(scalar)), *alpha = coef, *shift = coef + C;
    if (!weight || !bias) {
        scalar *ones = coef + 2 * C, *zeros = coef + 3 * C;
        for (int64_t c = 0; c < C; c++) ones[c] = 1, zeros[c] = 0;
        if (!weight) weight = ones;
        if (!bias) bias = zeros;
    }
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
        double a = (double)weight[c] / sqrt((double)running_var[c] + eps);
        alpha[c] = (scalar)a;
        shift[c] = (scalar)((double)bias[c] - (double)running_mean[c] * a);
    }
    FN(affine)(x, out, A, C, B, alpha, shift, threads);
    free(coef);
}
