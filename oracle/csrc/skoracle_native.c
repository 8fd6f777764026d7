/* Compiled twins of the NumPy oracle's dequantize and of kernels_ref's packed GEMVs.
 *
 * Every function here performs exactly the float32/float64 operations, in exactly the
 * order, that the NumPy definition (oracle/quants.py, kernels_ref/semantics.py) performs;
 * tests/test_native.py checks that bit for bit on the golden set and on random shapes.
 * Built by oracle/native.py with -ffp-contract=off and without -ffast-math, so the
 * compiler neither fuses a*b+c nor reassociates a sum: where a modelled kernel fuses, the
 * code calls fmaf() explicitly. Loops over the rows of a tile (R at a time) carry
 * independent accumulators, so the float order of each row stays the modelled one while
 * the processor overlaps the rows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#if defined(__AVX__) || defined(__FMA__)
#include <immintrin.h>
#endif

enum { Q4_0, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K };
enum { EXACT, FAST, SCALAR, PANAMA, NEON };
enum { RED_SEQUENTIAL, RED_PAIRWISE, RED_HALVING };

#define R 8      /* output rows per tile */
#define LANES 16 /* lanes of the exact and fast orders */

static const float *H; /* fp16 -> float32, 65536 entries: the oracle's own table */

void sk_set_fp16_table(const float *table) { H = table; }

static inline float h16(const uint8_t *p) { return H[p[0] | (p[1] << 8)]; }

static const int BLOCK[] = {32, 32, 32, 32, 256, 256, 256};
static const int NBYTES[] = {18, 22, 24, 34, 144, 176, 210};

/* one block of R rows, element-major, so that each step runs across the rows at once:
 * views into the buffers holding every block of the R rows */
typedef struct {
    float (*q)[R]; /* codes, as oracle.unpack gives them (small integers, exact) */
    float *d, *m;  /* d; m (Q5_1) or dmin (K-quants) */
    int32_t (*sc)[R], (*mn)[R];
} Tile;

static inline void scale_min_k4(int j, const uint8_t *q, int32_t *d, int32_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static inline uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* a block's codes as floats (small integers, exact), in element order and in the
 * convention of oracle.unpack: Q4_0 q-8, Q5_0 q-16, Q8_0 signed, Q6_K q-32, the others
 * unsigned. Plain loops over contiguous arrays, which the compiler vectorizes. */
static inline __attribute__((always_inline)) void codes_row(int fmt, const uint8_t *b,
                                                            float *restrict c) {
    switch (fmt) {
    case Q4_0:
        for (int j = 0; j < 16; j++) {
            c[j] = (float)((b[2 + j] & 0xF) - 8);
            c[j + 16] = (float)((b[2 + j] >> 4) - 8);
        }
        return;
    case Q5_0:
    case Q5_1: {
        const int off = fmt == Q5_0 ? 2 : 4, sub = fmt == Q5_0 ? 16 : 0;
        const uint32_t qh = le32(b + off);
        const uint8_t *qs = b + off + 4;
        for (int j = 0; j < 16; j++) {
            c[j] = (float)((int32_t)((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)) - sub);
            c[j + 16] = (float)((int32_t)((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - sub);
        }
        return;
    }
    case Q8_0:
        for (int j = 0; j < 32; j++) c[j] = (float)(int8_t)b[2 + j];
        return;
    case Q4_K:
    case Q5_K: {
        const uint8_t *ql = b + (fmt == Q4_K ? 16 : 48), *qh = b + 16;
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) {
                int lo = ql[32 * k + l] & 0xF, hi = ql[32 * k + l] >> 4;
                if (fmt == Q5_K) {
                    lo |= ((qh[l] >> (2 * k)) & 1) << 4;
                    hi |= ((qh[l] >> (2 * k + 1)) & 1) << 4;
                }
                c[64 * k + l] = (float)lo;
                c[64 * k + 32 + l] = (float)hi;
            }
        return;
    }
    case Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        for (int n = 0; n < 2; n++, ql += 64, qh += 32, c += 128)
            for (int l = 0; l < 32; l++) {
                c[l] = (float)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                c[l + 32] = (float)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                c[l + 64] = (float)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                c[l + 96] = (float)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        return;
    }
    }
}

/* a block's scales: d; m (Q5_1) or dmin (K-quants); sc and mn per group (K-quants, Q6_K) */
typedef struct {
    float d, m;
    int32_t sc[16], mn[8];
} Scales;

static inline __attribute__((always_inline)) void scales_row(int fmt, const uint8_t *b,
                                                             Scales *k) {
    switch (fmt) {
    case Q4_0:
    case Q5_0:
    case Q8_0:
        k->d = h16(b);
        return;
    case Q5_1:
        k->d = h16(b);
        k->m = h16(b + 2);
        return;
    case Q4_K:
    case Q5_K:
        k->d = h16(b);
        k->m = h16(b + 2);
        for (int g = 0; g < 8; g++) scale_min_k4(g, b + 4, &k->sc[g], &k->mn[g]);
        return;
    case Q6_K:
        k->d = h16(b + 208);
        for (int g = 0; g < 16; g++) k->sc[g] = (int8_t)b[192 + g];
        return;
    }
}

/* ggml's dequantize_row_* of one block, float operations in its order:
 * Q4_0/Q5_0/Q8_0 x*d; Q5_1 x*d + m; Q4_K/Q5_K (d*sc)*q - dmin*m per 32-group;
 * Q6_K (d*sc)*q per 16-group */
static inline __attribute__((always_inline)) void dequant_block(int fmt, const uint8_t *b,
                                                                float *restrict y) {
    float c[256];
    Scales k;
    codes_row(fmt, b, c);
    scales_row(fmt, b, &k);
    switch (fmt) {
    case Q4_0:
    case Q5_0:
    case Q8_0:
        for (int j = 0; j < 32; j++) y[j] = c[j] * k.d;
        return;
    case Q5_1:
        for (int j = 0; j < 32; j++) y[j] = c[j] * k.d + k.m;
        return;
    case Q4_K:
    case Q5_K:
        for (int g = 0; g < 8; g++) {
            const float d1 = k.d * (float)k.sc[g], m1 = k.m * (float)k.mn[g];
            for (int l = 0; l < 32; l++) y[32 * g + l] = d1 * c[32 * g + l] - m1;
        }
        return;
    case Q6_K:
        for (int g = 0; g < 16; g++) {
            const float ds = k.d * (float)k.sc[g];
            for (int l = 0; l < 16; l++) y[16 * g + l] = ds * c[16 * g + l];
        }
        return;
    }
}

#define DEQUANT_RUN(F)                                                                    \
    static void dequant_run_##F(const uint8_t *raw, int64_t nblocks, float *out) {         \
        for (int64_t i = 0; i < nblocks; i++)                                             \
            dequant_block(F, raw + i * NBYTES[F], out + i * BLOCK[F]);                    \
    }
DEQUANT_RUN(Q4_0)
DEQUANT_RUN(Q5_0)
DEQUANT_RUN(Q5_1)
DEQUANT_RUN(Q8_0)
DEQUANT_RUN(Q4_K)
DEQUANT_RUN(Q5_K)
DEQUANT_RUN(Q6_K)

typedef void (*dequant_fn)(const uint8_t *, int64_t, float *);
static const dequant_fn DEQUANT[] = {dequant_run_Q4_0, dequant_run_Q5_0, dequant_run_Q5_1,
                                     dequant_run_Q8_0, dequant_run_Q4_K, dequant_run_Q5_K,
                                     dequant_run_Q6_K};

/* dequantize `nblocks` packed blocks of `fmt` into out (nblocks * block floats) */
int sk_dequantize(int fmt, const uint8_t *raw, int64_t nblocks, float *out) {
    if (fmt < 0 || fmt > Q6_K || !H) return -1;
    DEQUANT[fmt](raw, nblocks, out);
    return 0;
}


/* ------------------------------------------------------------------------------------ */
/* exact and fast: per row, LANES accumulators from -0 (lane l: elements l, l+LANES, ...),  */
/* then an adjacent-pair tree; exact in float64 (exact products), fast in float32          */

#define LANES_KERNEL(F)                                                                    \
    static void lanes_##F(int f64, const float *restrict x, int64_t batch, int64_t in_dim,  \
                          const uint8_t *restrict w, int64_t rows, int64_t row_bytes,       \
                          float *restrict y, int64_t y_stride) {                            \
        const int bs = BLOCK[F];                                                           \
        const int64_t nb = in_dim / bs;                                                    \
        float wb[256];                                                                     \
        for (int64_t r = 0; r < rows; r++)                                                 \
            for (int64_t bi = 0; bi < batch; bi++) {                                       \
                const float *xr = x + bi * in_dim;                                         \
                const uint8_t *row = w + r * row_bytes;                                    \
                if (f64) {                                                                 \
                    double v[LANES];                                                       \
                    for (int l = 0; l < LANES; l++) v[l] = -0.0;                           \
                    for (int64_t b = 0; b < nb; b++) {                                     \
                        dequant_block(F, row + b * NBYTES[F], wb);                         \
                        const float *xb = xr + b * bs;                                     \
                        for (int s = 0; s < bs; s += LANES)                                \
                            for (int l = 0; l < LANES; l++)                                \
                                v[l] += (double)xb[s + l] * (double)wb[s + l];             \
                    }                                                                      \
                    y[bi * y_stride + r] = (float)tree64(v, LANES);                        \
                } else {                                                                   \
                    float v[LANES];                                                        \
                    for (int l = 0; l < LANES; l++) v[l] = -0.0f;                          \
                    for (int64_t b = 0; b < nb; b++) {                                     \
                        dequant_block(F, row + b * NBYTES[F], wb);                         \
                        const float *xb = xr + b * bs;                                     \
                        for (int s = 0; s < bs; s += LANES)                                \
                            for (int l = 0; l < LANES; l++) v[l] += xb[s + l] * wb[s + l]; \
                    }                                                                      \
                    y[bi * y_stride + r] = tree32(v, LANES);                               \
                }                                                                          \
            }                                                                              \
    }

static inline double tree64(double *v, int n) {
    while (n > 1) {
        for (int i = 0; i < n / 2; i++) v[i] = v[2 * i] + v[2 * i + 1];
        n /= 2;
    }
    return v[0];
}

static inline float tree32(float *v, int n) {
    while (n > 1) {
        for (int i = 0; i < n / 2; i++) v[i] = v[2 * i] + v[2 * i + 1];
        n /= 2;
    }
    return v[0];
}

LANES_KERNEL(Q4_0)
LANES_KERNEL(Q5_0)
LANES_KERNEL(Q5_1)
LANES_KERNEL(Q8_0)
LANES_KERNEL(Q4_K)
LANES_KERNEL(Q5_K)
LANES_KERNEL(Q6_K)

typedef void (*lanes_fn)(int, const float *, int64_t, int64_t, const uint8_t *, int64_t, int64_t,
                         float *, int64_t);
static const lanes_fn LANES_FN[] = {lanes_Q4_0, lanes_Q5_0, lanes_Q5_1, lanes_Q8_0,
                                    lanes_Q4_K, lanes_Q5_K, lanes_Q6_K};

/* ------------------------------------------------------------------------------------ */
/* SKaiNET orders: R rows advance in lockstep, each with its own accumulators               */

/* 8 rows of a tile as one GCC vector: element-wise IEEE float32 operations, each rounded
 * (the vector extension neither fuses nor reassociates under -ffp-contract=off) */
typedef float v8f __attribute__((vector_size(32)));

static inline v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

/* a*b + c rounded once, per element (fmaf's semantics) */
static inline v8f fma8(v8f a, v8f b, v8f c) {
#ifdef __FMA__
    return (v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    v8f o;
    for (int i = 0; i < 8; i++) o[i] = fmaf(a[i], b[i], c[i]);
    return o;
#endif
}

static inline v8f splat8(float f) { return (v8f){f, f, f, f, f, f, f, f}; }

/* rows[r][e] -> dst[e][r] for e < n (n a multiple of 8): R = 8 rows */
static inline __attribute__((always_inline)) void transpose_rows(float rows[R][256], int n,
                                                                 float (*dst)[R]) {
#ifdef __AVX__
    for (int e = 0; e < n; e += 8) {
        __m256 r0 = _mm256_loadu_ps(rows[0] + e), r1 = _mm256_loadu_ps(rows[1] + e);
        __m256 r2 = _mm256_loadu_ps(rows[2] + e), r3 = _mm256_loadu_ps(rows[3] + e);
        __m256 r4 = _mm256_loadu_ps(rows[4] + e), r5 = _mm256_loadu_ps(rows[5] + e);
        __m256 r6 = _mm256_loadu_ps(rows[6] + e), r7 = _mm256_loadu_ps(rows[7] + e);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        _mm256_storeu_ps(dst[e + 0], _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(dst[e + 1], _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(dst[e + 2], _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(dst[e + 3], _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(dst[e + 4], _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(dst[e + 5], _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(dst[e + 6], _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(dst[e + 7], _mm256_permute2f128_ps(u3, u7, 0x31));
    }
#else
    for (int e = 0; e < n; e++)
        for (int r = 0; r < R; r++) dst[e][r] = rows[r][e];
#endif
}

/* block b of the tile's rows (nr of them, row_bytes apart): codes, scales and, with
 * element-major. Rows past nr keep what they held. */
static inline __attribute__((always_inline)) void tile_fill(int fmt,
                                                            const uint8_t *blk, int64_t row_bytes,
                                                            int nr, const Tile *t,
                                                            float rows[R][256]) {
    const int bs = BLOCK[fmt];
    for (int r = 0; r < nr; r++) {
        Scales k;
        k.m = 0.0f;
        __builtin_prefetch(blk + r * row_bytes + 384); /* the row's blocks a few ahead */
        codes_row(fmt, blk + r * row_bytes, rows[r]);
        scales_row(fmt, blk + r * row_bytes, &k);
        t->d[r] = k.d;
        t->m[r] = k.m;
        if (fmt == Q4_K || fmt == Q5_K)
            for (int g = 0; g < 8; g++) t->sc[g][r] = k.sc[g], t->mn[g][r] = k.mn[g];
        if (fmt == Q6_K)
            for (int g = 0; g < 16; g++) t->sc[g][r] = k.sc[g];
    }
    transpose_rows(rows, bs, t->q);
}

/* v[l] (8 rows each) lanes-wide accumulators, reduced per row into out */
static inline __attribute__((always_inline)) v8f reduce_rows(v8f *v, int lanes, int red) {
    if (red == RED_SEQUENTIAL) {
        v8f o = splat8(0.0f);
        for (int l = 0; l < lanes; l++) o = o + v[l];
        return o;
    }
    for (int n = lanes; n > 1; n /= 2) {
        const int half = n / 2;
        for (int i = 0; i < half; i++)
            v[i] = red == RED_PAIRWISE ? v[2 * i] + v[2 * i + 1] : v[i] + v[i + half];
    }
    return v[0];
}

/* lanes-wide fma accumulators from +0 over n elements of x times rows' values w (+ off),
 * lane l taking elements l, l+lanes, ...; reduced per row */
static inline __attribute__((always_inline)) v8f fma_rows(const float *x, float (*w)[R], int n,
                                                          float off, int lanes, int red) {
    v8f v[16];
    for (int l = 0; l < lanes; l++) v[l] = splat8(0.0f);
    for (int s = 0; s < n; s += lanes)
        for (int l = 0; l < lanes; l++) v[l] = fma8(splat8(x[s + l]), load8(w[s + l]) + off, v[l]);
    return reduce_rows(v, lanes, red);
}

/* the rows' dequantized value of element e, from the tile's codes and scales in exactly
 * dequant_block's operations: Q5_0 q*d, Q5_1 q*d + m, Q6_K (d*sc)*q (ds[g] = d*sc) */
static inline __attribute__((always_inline)) v8f wvec(int fmt, const Tile *t, int e, v8f d, v8f m,
                                                      const v8f *ds) {
    if (fmt == Q6_K) return ds[e / 16] * load8(t->q[e]);
    const v8f w = load8(t->q[e]) * d;
    return fmt == Q5_1 ? w + m : w;
}

/* per-16-group d*sc of Q6_K rows (d times the float of each int8 scale) */
static inline __attribute__((always_inline)) void q6k_scales(const Tile *t, v8f *ds) {
    const v8f d = load8(t->d);
    for (int g = 0; g < 16; g++) {
        v8f sc;
        for (int r = 0; r < R; r++) sc[r] = (float)t->sc[g][r];
        ds[g] = d * sc;
    }
}

/* fma_rows over the rows' dequantized values (wvec) */
static inline __attribute__((always_inline)) v8f fma_rows_w(const float *x, int fmt, const Tile *t,
                                                            int n, int lanes, int red) {
    v8f v[16], ds[16];
    const v8f d = load8(t->d), m = load8(t->m);
    if (fmt == Q6_K) q6k_scales(t, ds);
    for (int l = 0; l < lanes; l++) v[l] = splat8(0.0f);
    for (int s = 0; s < n; s += lanes)
        for (int l = 0; l < lanes; l++)
            v[l] = fma8(splat8(x[s + l]), wvec(fmt, t, s + l, d, m, ds), v[l]);
    return reduce_rows(v, lanes, red);
}

static inline float lane_add_sum(const float *x, int n, int lanes, int red) {
    float v[16] = {0};
    for (int s = 0; s < n; s += lanes)
        for (int l = 0; l < lanes; l++) v[l] = x[s + l] + v[l];
    if (red == RED_SEQUENTIAL) {
        float o = 0.0f;
        for (int l = 0; l < lanes; l++) o = o + v[l];
        return o;
    }
    for (int n2 = lanes; n2 > 1; n2 /= 2)
        for (int i = 0; i < n2 / 2; i++)
            v[i] = red == RED_PAIRWISE ? v[2 * i] + v[2 * i + 1] : v[i] + v[i + n2 / 2];
    return v[0];
}

static inline float seq_sum(const float *x, int n) {
    float o = 0.0f;
    for (int e = 0; e < n; e++) o = o + x[e];
    return o;
}

typedef struct {
    int lanes, red, fused, rm;
} Opts;

/* SKaiNET's Panama kernels, one block, with `L` (the lane count) a constant */
static inline __attribute__((always_inline)) void panama_step(int fmt, const int L, int red,
                                                              const float *restrict x,
                                                              const Tile *t, float *restrict acc) {
    v8f a = load8(acc);
    switch (fmt) {
    case Q8_0:
    case Q4_0:
        a = a + fma_rows(x, t->q, 32, 0.0f, L, red) * load8(t->d);
        break;
    case Q5_0:
    case Q5_1:
    case Q6_K:
        a = a + fma_rows_w(x, fmt, t, BLOCK[fmt], L, red);
        break;
    case Q4_K:
    case Q5_K: {
        const v8f d = load8(t->d), dmin = load8(t->m);
        for (int g = 0; g < 8; g++) {
            const float is = lane_add_sum(x + 32 * g, 32, L, red);
            const v8f cs = fma_rows(x + 32 * g, t->q + 32 * g, 32, 0.0f, L, red);
            v8f sc, mn;
            for (int r = 0; r < R; r++) sc[r] = (float)t->sc[g][r], mn[r] = (float)t->mn[g][r];
            a = a + (cs * (d * sc) - is * (dmin * mn));
        }
        break;
    }
    }
    store8(acc, a);
}

/* one block of a tile for one activation row: acc[r] advances in the modelled order */
static inline __attribute__((always_inline)) void step(int sem, int fmt, const Opts *o,
                                                       const float *restrict x, const Tile *t,
                                                       float *restrict acc, const int8_t *q8,
                                                       float di) {
    if (sem == SCALAR) {
        switch (fmt) {
        case Q8_0: {
            v8f a = load8(acc);
            const v8f d = load8(t->d);
            for (int e = 0; e < 32; e++) a = a + (x[e] * load8(t->q[e])) * d;
            store8(acc, a);
            return;
        }
        case Q4_0:
            for (int j = 0; j < 16; j++)
                for (int h = 0; h < 32; h += 16)
                    for (int r = 0; r < R; r++)
                        acc[r] = acc[r] + (x[j + h] * t->q[j + h][r]) * t->d[r];
            return;
        case Q5_0:
        case Q5_1: {
            v8f a = load8(acc);
            const v8f d = load8(t->d), m = load8(t->m);
            for (int j = 0; j < 16; j++)
                a = a + (x[j] * wvec(fmt, t, j, d, m, NULL) + x[j + 16] * wvec(fmt, t, j + 16, d, m, NULL));
            store8(acc, a);
            return;
        }
        case Q4_K:
        case Q5_K:
            for (int g = 0; g < 8; g++) {
                const float is = seq_sum(x + 32 * g, 32);
                float cs[R];
                for (int r = 0; r < R; r++) cs[r] = 0.0f;
                for (int e = 32 * g; e < 32 * g + 32; e++)
                    for (int r = 0; r < R; r++) cs[r] = cs[r] + x[e] * t->q[e][r];
                for (int r = 0; r < R; r++) {
                    const float scale = t->d[r] * (float)t->sc[g][r];
                    const float offset = t->m[r] * (float)t->mn[g][r];
                    acc[r] = acc[r] + (cs[r] * scale - is * offset);
                }
            }
            return;
        case Q6_K: {
            v8f a = load8(acc), ds[16];
            q6k_scales(t, ds);
            for (int e = 0; e < 256; e++) a = a + x[e] * (ds[e / 16] * load8(t->q[e]));
            store8(acc, a);
            return;
        }
        }
    }
    if (sem == PANAMA) {
        /* the lane count as a constant, so each width compiles to its own vector code */
        switch (o->lanes) {
        case 4: panama_step(fmt, 4, o->red, x, t, acc); return;
        case 8: panama_step(fmt, 8, o->red, x, t, acc); return;
        default: panama_step(fmt, 16, o->red, x, t, acc); return;
        }
    }
    /* NEON */
    const int fused = o->fused;
    switch (fmt) {
    case Q8_0:
    case Q4_0: {
        const v8f sum = fma_rows(x, t->q, 32, 0.0f, 4, RED_PAIRWISE), d = load8(t->d);
        const v8f a = load8(acc);
        store8(acc, fused ? fma8(sum, d, a) : a + sum * d);
        return;
    }
    case Q5_0:
    case Q5_1: {
        const float is = fused ? lane_add_sum(x, 32, 4, RED_PAIRWISE) : seq_sum(x, 32);
        const v8f cd = fma_rows(x, t->q, 32, fmt == Q5_0 ? 16.0f : 0.0f, 4, RED_PAIRWISE);
        const v8f d = load8(t->d), m = load8(t->m), a = load8(acc);
        if (fmt == Q5_0) {
            const v8f tt = cd - 16.0f * is;
            store8(acc, fused ? fma8(tt, d, a) : a + tt * d);
        } else if (!fused) {
            store8(acc, a + (d * cd + m * is));
        } else if (o->rm) {
            store8(acc, a + fma8(d, cd, m * is));
        } else {
            store8(acc, fma8(m, splat8(is), fma8(d, cd, a)));
        }
        return;
    }
    case Q5_K: {
        float is[8];
        v8f cs[8], local = splat8(0.0f), sc[8], mn[8];
        const v8f d = load8(t->d), dmin = load8(t->m);
        for (int g = 0; g < 8; g++) {
            is[g] = lane_add_sum(x + 32 * g, 32, 4, RED_PAIRWISE);
            cs[g] = fma_rows(x + 32 * g, t->q + 32 * g, 32, 0.0f, 4, RED_PAIRWISE);
            for (int r = 0; r < R; r++) sc[g][r] = (float)t->sc[g][r], mn[g][r] = (float)t->mn[g][r];
        }
        if (fused) {
            for (int lo = 0; lo < 8; lo += 2) {
                const int hi = lo + 1;
                const v8f a = fma8(sc[lo], cs[lo], sc[hi] * cs[hi]);
                const v8f b = fma8(dmin * is[lo], mn[lo], mn[hi] * (dmin * is[hi]));
                local = local + fma8(a, d, -b);
            }
        } else {
            for (int g = 0; g < 8; g++) local = local + (cs[g] * (d * sc[g]) - is[g] * (dmin * mn[g]));
        }
        store8(acc, load8(acc) + local);
        return;
    }
    case Q4_K: {
        int32_t qsum[8];
        int64_t a[R] = {0}, b[R] = {0};
        for (int g = 0; g < 8; g++) {
            int32_t sq = 0, dot[R] = {0};
            for (int e = 32 * g; e < 32 * g + 32; e++) {
                sq += q8[e];
                for (int r = 0; r < R; r++) dot[r] += q8[e] * (int32_t)t->q[e][r];
            }
            qsum[g] = sq;
            for (int r = 0; r < R; r++) {
                a[r] += (int64_t)dot[r] * t->sc[g][r];
                b[r] += (int64_t)qsum[g] * t->mn[g][r];
            }
        }
        for (int r = 0; r < R; r++) {
            const float fa = (float)a[r], fb = (float)b[r], d = t->d[r], dmin = t->m[r];
            if (fused)
                acc[r] = fmaf(fmaf(fa, d, -(fb * dmin)), di, acc[r]);
            else
                acc[r] = acc[r] + di * (d * fa - dmin * fb);
        }
        return;
    }
    case Q6_K: {
        int64_t ws[R] = {0};
        for (int g = 0; g < 16; g++) {
            int32_t dot[R] = {0};
            for (int e = 16 * g; e < 16 * g + 16; e++)
                for (int r = 0; r < R; r++) dot[r] += q8[e] * (int32_t)t->q[e][r];
            for (int r = 0; r < R; r++) ws[r] += (int64_t)dot[r] * t->sc[g][r];
        }
        for (int r = 0; r < R; r++) {
            const float fw = (float)ws[r], dd = t->d[r] * di;
            acc[r] = fused ? fmaf(dd, fw, acc[r]) : acc[r] + dd * fw;
        }
        return;
    }
    }
}

/* the tile's buffers: every block of R rows, element-major */
typedef struct {
    float (*q)[R];
    float *d, *m;
    int32_t (*sc)[R], (*mn)[R];
    float (*rows)[256]; /* R rows of one block, row-major, before transposing */
} TileBuf;

static inline Tile tile_at(const TileBuf *tb, int64_t b, int bs) {
    const Tile t = {tb->q + b * bs, tb->d + b * R, tb->m + b * R, tb->sc + b * 16,
                    tb->mn + b * 16};
    return t;
}

/* Each tile of R rows is decoded row by row (sequential reads of the packed bytes), then
 * its blocks are walked in order with all R rows advancing together. */
#define TILE_KERNEL(SEM, F)                                                                \
    static void tile_##SEM##_##F(const Opts *o, const float *x, int64_t batch,             \
                                 int64_t in_dim, const uint8_t *w, int64_t rows,           \
                                 int64_t row_bytes, float *y, int64_t y_stride,            \
                                 const int8_t *q8, const float *q8d, const TileBuf *tb,    \
                                 float *acc) {                                             \
        const int bs = BLOCK[F];                                                           \
        const int64_t nb = in_dim / bs;                                                    \
        for (int64_t r0 = 0; r0 < rows; r0 += R) {                                         \
            const int nr = rows - r0 < R ? (int)(rows - r0) : R;                           \
            for (int64_t b = 0; b < nb; b++) {                                             \
                const Tile t = tile_at(tb, b, bs);                                         \
                tile_fill(F, w + r0 * row_bytes + b * NBYTES[F], row_bytes, nr, &t,        \
                          tb->rows);                                                       \
            }                                                                              \
            for (int64_t i = 0; i < batch * R; i++) acc[i] = 0.0f;                         \
            for (int64_t b = 0; b < nb; b++) {                                             \
                const Tile t = tile_at(tb, b, bs);                                         \
                for (int64_t bi = 0; bi < batch; bi++)                                     \
                    step(SEM, F, o, x + bi * in_dim + b * bs, &t, acc + bi * R,            \
                         q8 ? q8 + (bi * nb + b) * 256 : NULL, q8d ? q8d[bi * nb + b] : 0.0f); \
            }                                                                              \
            for (int64_t bi = 0; bi < batch; bi++)                                         \
                for (int r = 0; r < nr; r++) y[bi * y_stride + r0 + r] = acc[bi * R + r];  \
        }                                                                                  \
    }

#define TILE_KERNELS(SEM)                                                                  \
    TILE_KERNEL(SEM, Q4_0)                                                                 \
    TILE_KERNEL(SEM, Q5_0)                                                                 \
    TILE_KERNEL(SEM, Q5_1)                                                                 \
    TILE_KERNEL(SEM, Q8_0)                                                                 \
    TILE_KERNEL(SEM, Q4_K)                                                                 \
    TILE_KERNEL(SEM, Q5_K)                                                                 \
    TILE_KERNEL(SEM, Q6_K)
TILE_KERNELS(SCALAR)
TILE_KERNELS(PANAMA)
TILE_KERNELS(NEON)

typedef void (*tile_fn)(const Opts *, const float *, int64_t, int64_t, const uint8_t *, int64_t,
                        int64_t, float *, int64_t, const int8_t *, const float *, const TileBuf *,
                        float *);
#define ROW(SEM)                                                                           \
    {tile_##SEM##_Q4_0, tile_##SEM##_Q5_0, tile_##SEM##_Q5_1, tile_##SEM##_Q8_0,             \
     tile_##SEM##_Q4_K, tile_##SEM##_Q5_K, tile_##SEM##_Q6_K}
static const tile_fn TILE_FN[3][7] = {ROW(SCALAR), ROW(PANAMA), ROW(NEON)};

/* y[bi*y_stride + r] = row r of W (row-major packed rows, row_bytes apart) . x[bi] in the
 * float order of `sem`. q8/q8d: the quantized activations (batch, nb, 256) and their
 * scales (batch, nb) for the NEON K-quant kernels that quantize them, else NULL.
 * Returns 0, or -1 for an unsupported request (the caller then runs the NumPy model). */
int sk_gemv(int sem, int fmt, int lanes, int red, int fused, int rm, const float *x,
            int64_t batch, int64_t in_dim, const uint8_t *w, int64_t rows, int64_t row_bytes,
            float *y, int64_t y_stride, const int8_t *q8, const float *q8d) {
    if (fmt < 0 || fmt > Q6_K || sem < EXACT || sem > NEON || !H) return -1;
    if (in_dim % BLOCK[fmt]) return -1;
    if (sem == EXACT || sem == FAST) {
        LANES_FN[fmt](sem == EXACT, x, batch, in_dim, w, rows, row_bytes, y, y_stride);
        return 0;
    }
    if (sem == PANAMA && lanes != 4 && lanes != 8 && lanes != 16) return -1;
    if (sem == NEON && (fmt == Q4_K || fmt == Q6_K) && (!q8 || !q8d)) return -1;
    const Opts o = {lanes, red, fused, rm};
    const int64_t nb = in_dim / BLOCK[fmt];
    /* zeroed: rows of a last, partial tile compute on zeros and are not stored */
    TileBuf tb = {calloc(in_dim, sizeof(float) * R),
                  calloc(nb, sizeof(float) * R), calloc(nb, sizeof(float) * R),
                  calloc(nb * 16, sizeof(int32_t) * R), calloc(nb * 16, sizeof(int32_t) * R),
                  calloc(R, sizeof(float) * 256)};
    float *acc = malloc(sizeof(float) * batch * R);
    int rc = -2;
    if (tb.q && tb.d && tb.m && tb.sc && tb.mn && tb.rows && acc) {
        TILE_FN[sem - SCALAR][fmt](&o, x, batch, in_dim, w, rows, row_bytes, y, y_stride, q8,
                                   q8d, &tb, acc);
        rc = 0;
    }
    free(tb.q), free(tb.d), free(tb.m), free(tb.sc), free(tb.mn), free(tb.rows);
    free(acc);
    return rc;
}
