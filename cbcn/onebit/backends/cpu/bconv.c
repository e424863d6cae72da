/* The CPU engine's native kernels: XNOR + popcount binary convolution over packed signs, with
 * the layer's whole epilogue fused, and sign packing of float tensors.
 *
 * Packing contract (docs/CONTRACTS.md): a bit is set where the value is negative (NaN included),
 * 32 channels per uint32 word, channel c in word c/32 at bit c%32, pixels NHWC; padding bits 0.
 *
 * For ±1 vectors a, b of n channels packed that way, a·b = n − 2·popcount(a XOR b); padding bits
 * are 0 in both operands and so never count. Zero padding of the convolution (a 0, not a −1) is
 * honoured by summing only the taps that fall inside the image: out = n_valid·C_in − 2·Σ popcounts.
 * The sums are exact integers, as in cbcn.backends.reference.
 *
 * The epilogue (cbcn.backends.epilogue.Epilogue, in its fixed order):
 *   v = sum · scale (+ bias)  ->  2×2 max- or average pool  ->  ReLU  ->  batch-norm  ->  + residual
 * each step rounded separately (this file is compiled with -ffp-contract=off), except that the
 * batch-norm is one fused multiply-add when bn_fma is set — what PyTorch's CPU batch-norm does,
 * which the Python side checks against torch before it lets this code fuse a batch-norm.
 * Outputs: the float result (any strides) and/or its packed signs, for the next binary layer.
 *
 * Plain C99. With AVX-512 (F, BW, VPOPCNTDQ) the inner loops use 16-lane popcounts; without, a
 * portable scalar loop (__builtin_popcount) gives the same integers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define CBCN_AVX512 1
#else
#define CBCN_AVX512 0
#endif
#if CBCN_AVX512 && defined(__AVX512BITALG__)
#define CBCN_PAIRS 1 /* layers of <= 16 input channels: two output pixels per 16-bit-lane popcount */
#else
#define CBCN_PAIRS 0
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define CBCN_ABI_VERSION 7
#define LANES 16 /* output channels per weight vector: the prepared bank is (COB, KH, KW, XW, 16) */
#define PIX_BLOCK 8 /* output pixels sharing each weight vector load in the interior */
#define PAIR_BLOCK 8 /* pixel pairs sharing each weight vector load (narrow layers) */

/* The one parameter struct of a fused binary conv (mirrored by ctypes in native.py). */
typedef struct {
    const uint32_t *x;      /* packed input (N, H, W, XW) */
    int64_t N, H, W, XW, C_in;
    const uint32_t *w;      /* prepared bank (COB, KH, KW, XW, LANES); C_out padded to LANES */
    int64_t C_out, KH, KW, stride, pad;
    int64_t OH, OW;         /* conv output size */
    const float *scale;     /* per output channel, or NULL */
    const float *bias;      /* per output channel, or NULL */
    int64_t pool;           /* 0; 2: MaxPool2d(2) (floor); 3: AvgPool2d(2, 2, ceil_mode, no padding counted) */
    int64_t relu;
    const float *bn_mul;    /* batch-norm affine (per channel), or NULL */
    const float *bn_add;
    int64_t bn_fma;         /* 1: fmaf(v, mul, add); 0: v*mul, then + add */
    const float *residual;  /* added last, shaped like the (pooled) output, or NULL */
    int64_t rs_n, rs_c, rs_h, rs_w;
    float *out;             /* float output (N, C_out, PH, PW) with these strides, or NULL */
    int64_t os_n, os_c, os_h, os_w;
    uint32_t *out_packed;   /* packed signs of the output (N, PH, PW, ceil(C_out/32)), or NULL */
    int64_t threads;
    const float *src;       /* instead of a conv (x, w NULL): the values of a float tensor (N, C_out, OH, OW) */
    int64_t ss_n, ss_c, ss_h, ss_w;
    /* set by cbcn_binary_conv (callers leave them 0): the zero-haloed input and the weight sums */
    const uint32_t *xh;     /* (N, HP, WP, XW), HP = H + 2·pad, WP = W + 2·pad */
    int64_t HP, WP;
    const int32_t *wsum;    /* (COB, KH, KW, LANES): Σ_c of each tap's ±1 weights */
    const uint32_t *pairs;  /* narrow layers: (N, HP, WP) words x[j] | x[j + stride] << 16, or NULL */
    const int32_t *row_class, *col_class; /* border class of each output row / column (0: inside) */
    const int32_t *corr;    /* (row classes, col classes, COP): the padding correction of each class */
    int64_t n_col_classes;
} cbcn_conv_params;

int cbcn_abi_version(void) { return CBCN_ABI_VERSION; }
int cbcn_simd(void) { return CBCN_AVX512 + CBCN_PAIRS; } /* 1: AVX-512 popcounts; 2: and 16-bit-lane pairs */
int cbcn_lanes(void) { return LANES; }

/* Per-thread scratch buffers kept between calls: a fresh malloc of a few hundred KB per layer is
 * an mmap and a page fault per 4 KB on every call (glibc's default), which costs as much as a
 * small layer's arithmetic. Slot i of the calling thread grows as needed and is never freed
 * (a few MB at most per thread). Contents are not preserved between uses. */
enum { SCRATCH_HALO, SCRATCH_PAIRS, SCRATCH_WSUM, SCRATCH_SUMS, SCRATCH_VALS, SCRATCH_SRC, SCRATCH_RES, SCRATCH_OUT,
       SCRATCH_SLOTS };
static __thread void *scratch_ptr[SCRATCH_SLOTS];
static __thread size_t scratch_size[SCRATCH_SLOTS];

static void *scratch(int slot, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (scratch_size[slot] < bytes) {
        void *p = realloc(scratch_ptr[slot], bytes);
        if (!p) return NULL;
        scratch_ptr[slot] = p;
        scratch_size[slot] = bytes;
    }
    return scratch_ptr[slot];
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
/* Output size along one axis after the epilogue's pooling (see `pool`). */
static inline int64_t pooled_size(int64_t n, int64_t pool) { return pool == 2 ? n / 2 : pool == 3 ? (n + 1) / 2 : n; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

#if CBCN_AVX512
/* conv_pixels for a compile-time pixel count NP (inlined per count, so the NP accumulators stay
 * in registers: a loop over a run-time count would keep them in memory). */
static inline __attribute__((always_inline)) void conv_pixels_avx512(
    const cbcn_conv_params *a, const uint32_t *x_img, int64_t ih0, int64_t iw0, const int NP, int32_t *sums) {
    const int64_t XW = a->XW, KW = a->KW, KH = a->KH, WP = a->WP, xstep = a->stride * a->XW;
    const int64_t COB = (a->C_out + LANES - 1) / LANES, COP = COB * LANES;
    const __m512i nv = _mm512_set1_epi32((int32_t)(KH * KW * a->C_in));
    for (int64_t cob = 0; cob < COB; cob++) {
        __m512i acc[PIX_BLOCK];
        for (int p = 0; p < NP; p++) acc[p] = _mm512_setzero_si512();
        for (int64_t kh = 0; kh < KH; kh++) {
            const uint32_t *xrow = x_img + (ih0 + kh) * WP * XW;
            for (int64_t kw = 0; kw < KW; kw++) {
                const uint32_t *wp = a->w + (((cob * KH + kh) * KW + kw) * XW) * LANES;
                const uint32_t *xp = xrow + (iw0 + kw) * XW;
                for (int64_t wd = 0; wd < XW; wd++) {
                    const __m512i wv = _mm512_loadu_si512((const void *)(wp + wd * LANES));
                    for (int p = 0; p < NP; p++)
                        acc[p] = _mm512_add_epi32(acc[p], _mm512_popcnt_epi32(_mm512_xor_si512(_mm512_set1_epi32((int)xp[p * xstep + wd]), wv)));
                }
            }
        }
        for (int p = 0; p < NP; p++)
            _mm512_storeu_si512((void *)(sums + p * COP + cob * LANES), _mm512_sub_epi32(nv, _mm512_slli_epi32(acc[p], 1)));
    }
}
#endif

/* Conv sums of `npix` output pixels of one output row over the zero-haloed input (halo bits 0,
 * i.e. +1; conv_row corrects the border pixels), whose windows start at haloed row ih0 and
 * column iw0 + p·stride: sums[p·COP + co] = KH·KW·C_in − 2·Σ popcount. */
static void conv_pixels(const cbcn_conv_params *a, const uint32_t *x_img, int64_t ih0, int64_t iw0, int64_t npix,
                        int32_t *sums) {
#if CBCN_AVX512
    switch (npix) {
#define CBCN_NP(n) case n: conv_pixels_avx512(a, x_img, ih0, iw0, n, sums); break;
        CBCN_NP(1) CBCN_NP(2) CBCN_NP(3) CBCN_NP(4) CBCN_NP(5) CBCN_NP(6) CBCN_NP(7) CBCN_NP(8)
#undef CBCN_NP
        default: break;
    }
#else
    const int64_t XW = a->XW, KW = a->KW, KH = a->KH, WP = a->WP;
    const int64_t COB = (a->C_out + LANES - 1) / LANES, COP = COB * LANES;
    const int32_t n_all = (int32_t)(KH * KW * a->C_in);
    for (int64_t p = 0; p < npix; p++) {
        int32_t *sp = sums + p * COP;
        for (int64_t co = 0; co < COP; co++) sp[co] = 0;
        for (int64_t kh = 0; kh < KH; kh++) {
            const uint32_t *xrow = x_img + (ih0 + kh) * WP * XW;
            for (int64_t kw = 0; kw < KW; kw++) {
                const uint32_t *xp = xrow + (iw0 + p * a->stride + kw) * XW;
                for (int64_t cob = 0; cob < COB; cob++) {
                    const uint32_t *wp = a->w + (((cob * KH + kh) * KW + kw) * XW) * LANES;
                    for (int64_t wd = 0; wd < XW; wd++) {
                        const uint32_t xv = xp[wd];
                        for (int l = 0; l < LANES; l++)
                            sp[cob * LANES + l] += __builtin_popcount(xv ^ wp[wd * LANES + l]);
                    }
                }
            }
        }
        for (int64_t co = 0; co < COP; co++) sp[co] = n_all - 2 * sp[co];
    }
#endif
}

#if CBCN_PAIRS
/* Narrow layers (C_in <= 16, one half-word of signs per pixel): output pixels in pairs. Each
 * 32-bit lane holds output channel l's 16 weight bits twice and the broadcast word the signs of
 * the pair's two input pixels, so one 16-bit-lane popcount (BITALG) counts both pixels: half the
 * instructions of conv_pixels. `pairs` points at the window's first haloed row of pair words. */
static inline __attribute__((always_inline)) void conv_pixel_pairs_n(
    const cbcn_conv_params *a, const uint32_t *pairs, int64_t iw0, const int NP, int32_t *sums) {
    const int64_t KW = a->KW, KH = a->KH, WP = a->WP, s2 = 2 * a->stride;
    const int64_t COB = (a->C_out + LANES - 1) / LANES, COP = COB * LANES;
    const __m512i nv = _mm512_set1_epi32((int32_t)(KH * KW * a->C_in)), lo = _mm512_set1_epi32(0xFFFF);
    for (int64_t cob = 0; cob < COB; cob++) {
        __m512i acc[PAIR_BLOCK];
        for (int p = 0; p < NP; p++) acc[p] = _mm512_setzero_si512();
        for (int64_t kh = 0; kh < KH; kh++) {
            const uint32_t *prow = pairs + kh * WP;
            for (int64_t kw = 0; kw < KW; kw++) {
                __m512i wv = _mm512_loadu_si512((const void *)(a->w + ((cob * KH + kh) * KW + kw) * LANES));
                wv = _mm512_or_si512(wv, _mm512_slli_epi32(wv, 16));
                const uint32_t *xp = prow + iw0 + kw;
                for (int p = 0; p < NP; p++)
                    acc[p] = _mm512_add_epi16(acc[p], _mm512_popcnt_epi16(_mm512_xor_si512(_mm512_set1_epi32((int)xp[p * s2]), wv)));
            }
        }
        for (int p = 0; p < NP; p++) {
            const __m512i first = _mm512_and_si512(acc[p], lo), second = _mm512_srli_epi32(acc[p], 16);
            _mm512_storeu_si512((void *)(sums + (2 * p) * COP + cob * LANES), _mm512_sub_epi32(nv, _mm512_slli_epi32(first, 1)));
            _mm512_storeu_si512((void *)(sums + (2 * p + 1) * COP + cob * LANES), _mm512_sub_epi32(nv, _mm512_slli_epi32(second, 1)));
        }
    }
}

static void conv_pixel_pairs(const cbcn_conv_params *a, const uint32_t *pairs, int64_t iw0, int64_t npairs,
                             int32_t *sums) {
    switch (npairs) {
#define CBCN_NP(n) case n: conv_pixel_pairs_n(a, pairs, iw0, n, sums); break;
        CBCN_NP(1) CBCN_NP(2) CBCN_NP(3) CBCN_NP(4) CBCN_NP(5) CBCN_NP(6) CBCN_NP(7) CBCN_NP(8)
#undef CBCN_NP
        default: break;
    }
}
#endif

/* Zero padding: the halo counted each of its taps as +1 (bits 0), adding the tap's weight sum
 * Σ_c w[co][c][kh][kw]; subtract, per border pixel, the sum over its taps outside the image. Those
 * sums depend only on which taps are out, so cbcn_binary_conv tabulates them per class of rows
 * and columns (top / bottom / left / right edges, corners): corr[row class][col class][COP]. */
static void correct_border(const cbcn_conv_params *a, int64_t oh, int64_t ow0, int64_t ow1, int32_t *sums) {
    const int64_t COP = ((a->C_out + LANES - 1) / LANES) * LANES;
    const int32_t rc = a->row_class[oh];
    for (int64_t ow = ow0; ow < ow1; ow++) {
        const int32_t cc = a->col_class[ow];
        if (rc == 0 && cc == 0) continue;
        const int32_t *corr = a->corr + ((int64_t)rc * a->n_col_classes + cc) * COP;
        int32_t *sp = sums + ow * COP;
        for (int64_t i = 0; i < COP; i++) sp[i] -= corr[i];
    }
}

/* Conv sums of output row oh of image n: sums (OW, COP), from the zero-haloed input. */
static void conv_row(const cbcn_conv_params *a, int64_t n, int64_t oh, int32_t *sums) {
    const int64_t COP = ((a->C_out + LANES - 1) / LANES) * LANES, s = a->stride, WP = a->WP, OW = a->OW;
    const uint32_t *x_img = a->xh + n * a->HP * WP * a->XW;
    const int64_t ih0 = oh * s;
    int64_t ow = 0;
#if CBCN_PAIRS
    if (a->pairs && OW >= 2) {
        const uint32_t *pairs = a->pairs + (n * a->HP + ih0) * WP; /* rows ih0 .. ih0+KH-1 */
        for (; ow + 2 <= OW;) {
            const int64_t np = min64(PAIR_BLOCK, (OW - ow) / 2);
            conv_pixel_pairs(a, pairs, ow * s, np, sums + ow * COP);
            ow += 2 * np;
        }
    }
#endif
    for (; ow < OW;) {
        const int64_t np = min64(PIX_BLOCK, OW - ow);
        conv_pixels(a, x_img, ih0, ow * s, np, sums + ow * COP);
        ow += np;
    }
    if (a->pad) correct_border(a, oh, 0, OW, sums);
}

/* Row r of the epilogue's input, as (OW, COP) 4-byte values: the conv sums (int32, computed into
 * buf), or with a float source its values (float bits) — read in place where the source already
 * has that layout (a staged image), else gathered into buf. */
static const int32_t *source_row(const cbcn_conv_params *a, int64_t n, int64_t r, int32_t *buf) {
    if (!a->src) {
        conv_row(a, n, r, buf);
        return buf;
    }
    const int64_t COP = ((a->C_out + LANES - 1) / LANES) * LANES;
    const float *row = a->src + n * a->ss_n + r * a->ss_h;
    if (a->ss_c == 1 && a->ss_w == COP) return (const int32_t *)row;
    float *f = (float *)buf;
    if (a->ss_c == 1) {
        for (int64_t ow = 0; ow < a->OW; ow++) memcpy(f + ow * COP, row + ow * a->ss_w, (size_t)a->C_out * sizeof(float));
    } else {
        for (int64_t c = 0; c < a->C_out; c++)
            for (int64_t ow = 0; ow < a->OW; ow++) f[ow * COP + c] = row[c * a->ss_c + ow * a->ss_w];
    }
    return buf;
}

/* scale and bias of one conv output value (separately rounded, as BinaryConv2d.forward) */
static inline float scaled(const cbcn_conv_params *a, int32_t s, int64_t co) {
    float v;
    if (a->src) memcpy(&v, &s, sizeof v); else v = (float)s;
    if (a->scale) v = v * a->scale[co];
    if (a->bias) v = v + a->bias[co];
    return v;
}

/* Packs the signs of v[0..C) into words (bit set iff !(v >= 0)), padding bits 0. */
static inline void pack_row_signs(const float *v, int64_t C, uint32_t *words) {
    const int64_t XW = (C + 31) / 32;
    for (int64_t wd = 0; wd < XW; wd++) {
        uint32_t bits = 0;
        const int64_t c0 = wd * 32, c1 = min64(C, c0 + 32);
#if CBCN_AVX512
        if (c1 - c0 == 32) {
            const __m512 zero = _mm512_setzero_ps();
            const __mmask16 lo = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + c0), zero, _CMP_NGE_UQ);
            const __mmask16 hi = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + c0 + 16), zero, _CMP_NGE_UQ);
            words[wd] = (uint32_t)lo | ((uint32_t)hi << 16);
            continue;
        }
#endif
        for (int64_t c = c0; c < c1; c++) bits |= (uint32_t)(!(v[c] >= 0.0f)) << (c - c0);
        words[wd] = bits;
    }
}

/* The epilogue of one final output pixel (n, ph, pw): `v` holds its C_out scaled values (after
 * pooling); finish the chain in place, then store the float output and the packed signs. */
static inline void finish_pixel(const cbcn_conv_params *a, int64_t n, int64_t ph, int64_t pw, int64_t PH,
                                int64_t PW, float *v) {
    const int64_t C = a->C_out;
    if (a->relu)
        for (int64_t c = 0; c < C; c++) v[c] = v[c] < 0.0f ? 0.0f : v[c];
    if (a->bn_mul) {
        if (a->bn_fma)
            for (int64_t c = 0; c < C; c++) v[c] = fmaf(v[c], a->bn_mul[c], a->bn_add[c]);
        else
            for (int64_t c = 0; c < C; c++) { v[c] = v[c] * a->bn_mul[c]; v[c] = v[c] + a->bn_add[c]; }
    }
    if (a->residual) {
        const float *r = a->residual + n * a->rs_n + ph * a->rs_h + pw * a->rs_w;
        if (a->rs_c == 1)
            for (int64_t c = 0; c < C; c++) v[c] = v[c] + r[c];
        else
            for (int64_t c = 0; c < C; c++) v[c] = v[c] + r[c * a->rs_c];
    }
    if (a->out) {
        float *o = a->out + n * a->os_n + ph * a->os_h + pw * a->os_w;
        if (a->os_c == 1)
            memcpy(o, v, (size_t)C * sizeof(float));
        else
            for (int64_t c = 0; c < C; c++) o[c * a->os_c] = v[c];
    }
    if (a->out_packed) {
        const int64_t XWO = (C + 31) / 32;
        pack_row_signs(v, C, a->out_packed + ((n * PH + ph) * PW + pw) * XWO);
    }
    (void)PH;
}

#if CBCN_AVX512
/* The epilogue of 16 channels [c0, c0+16) of one conv output value vector (AVX-512): the same
 * steps and roundings as scaled() + finish_pixel(), with masks for the channel tail. */
/* One final output row (n, r): one conv row, or two pooled into one. `sums` holds 2·OW·COP
 * values, `vals` OW·COP floats. The source, residual and output have contiguous channels
 * (cbcn_binary_conv stages NCHW tensors per image first: a 16-channel scatter over NCHW planes
 * thrashes the cache). The epilogue runs as one tight pass over the row per step, each step's
 * switch tested once per row rather than per pixel. */
static void output_row_avx512(const cbcn_conv_params *a, int64_t n, int64_t r, int32_t *sums, float *vals) {
    const int64_t COP = ((a->C_out + LANES - 1) / LANES) * LANES, C = a->C_out;
    const int64_t PH = pooled_size(a->OH, a->pool), PW = pooled_size(a->OW, a->pool);
    const int is_float = a->src != NULL;
    const float *scale = a->scale, *bias = a->bias;
    const int two_rows = a->pool && 2 * r + 1 < a->OH; /* avg2's last window may have one row */
    const int32_t *row0 = source_row(a, n, a->pool ? 2 * r : r, sums);
    const int32_t *row1 = two_rows ? source_row(a, n, 2 * r + 1, sums + a->OW * COP) : NULL;
    const __m512 zero = _mm512_setzero_ps();
    /* per-channel vectors, masked past C (COP <= 16·LANES... loaded once per chunk below) */
#define CBCN_MASK(c0) (C - (c0) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - (c0))) - 1))
#define CBCN_VALUE(ptr, c0, m) ({ \
        const __m512i raw_ = _mm512_loadu_si512((const void *)((ptr) + (c0))); \
        __m512 v_ = is_float ? _mm512_castsi512_ps(raw_) : _mm512_cvtepi32_ps(raw_); \
        if (scale) v_ = _mm512_mul_ps(v_, _mm512_maskz_loadu_ps((m), scale + (c0))); \
        if (bias) v_ = _mm512_add_ps(v_, _mm512_maskz_loadu_ps((m), bias + (c0))); \
        v_; })
    /* 1. scale, bias and the pooling */
    for (int64_t c0 = 0; c0 < COP; c0 += 16) {
        const __mmask16 m = CBCN_MASK(c0);
        if (!a->pool) {
            for (int64_t w = 0; w < PW; w++) _mm512_storeu_ps(vals + w * COP + c0, CBCN_VALUE(row0 + w * COP, c0, m));
        } else if (a->pool == 2) {
            for (int64_t w = 0; w < PW; w++) {
                const int32_t *s00 = row0 + (2 * w) * COP, *s10 = row1 + (2 * w) * COP;
                __m512 v = CBCN_VALUE(s00, c0, m);
                v = _mm512_max_ps(CBCN_VALUE(s00 + COP, c0, m), v);
                v = _mm512_max_ps(CBCN_VALUE(s10, c0, m), v);
                v = _mm512_max_ps(CBCN_VALUE(s10 + COP, c0, m), v);
                _mm512_storeu_ps(vals + w * COP + c0, v);
            }
        } else { /* average: the window's sum in row-major order over the elements inside, / count */
            for (int64_t w = 0; w < PW; w++) {
                const int two_cols = 2 * w + 1 < a->OW;
                const int32_t *s00 = row0 + (2 * w) * COP;
                __m512 v = CBCN_VALUE(s00, c0, m);
                if (two_cols) v = _mm512_add_ps(v, CBCN_VALUE(s00 + COP, c0, m));
                if (two_rows) {
                    const int32_t *s10 = row1 + (2 * w) * COP;
                    v = _mm512_add_ps(v, CBCN_VALUE(s10, c0, m));
                    if (two_cols) v = _mm512_add_ps(v, CBCN_VALUE(s10 + COP, c0, m));
                }
                v = _mm512_div_ps(v, _mm512_set1_ps((float)((1 + two_rows) * (1 + two_cols))));
                _mm512_storeu_ps(vals + w * COP + c0, v);
            }
        }
    }
    /* 2. ReLU, batch-norm, residual */
    if (a->relu || a->bn_mul || a->residual) {
        const float *res_row = a->residual ? a->residual + n * a->rs_n + r * a->rs_h : NULL;
        for (int64_t c0 = 0; c0 < COP; c0 += 16) {
            const __mmask16 m = CBCN_MASK(c0);
            const __m512 mul = a->bn_mul ? _mm512_maskz_loadu_ps(m, a->bn_mul + c0) : zero;
            const __m512 add = a->bn_mul ? _mm512_maskz_loadu_ps(m, a->bn_add + c0) : zero;
            for (int64_t w = 0; w < PW; w++) {
                __m512 v = _mm512_loadu_ps(vals + w * COP + c0);
                if (a->relu) v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
                if (a->bn_mul) v = a->bn_fma ? _mm512_fmadd_ps(v, mul, add) : _mm512_add_ps(_mm512_mul_ps(v, mul), add);
                if (res_row) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res_row + w * a->rs_w + c0));
                _mm512_storeu_ps(vals + w * COP + c0, v);
            }
        }
    }
    /* 3. the float output */
    if (a->out) {
        float *out_row = a->out + n * a->os_n + r * a->os_h;
        if (a->os_w == COP) {
            memcpy(out_row, vals, (size_t)(PW * COP) * sizeof(float));
        } else {
            for (int64_t w = 0; w < PW; w++)
                for (int64_t c0 = 0; c0 < C; c0 += 16) _mm512_mask_storeu_ps(out_row + w * a->os_w + c0, CBCN_MASK(c0), _mm512_loadu_ps(vals + w * COP + c0));
        }
    }
    /* 4. the packed signs */
    if (a->out_packed) {
        const int64_t XWO = (C + 31) / 32;
        uint32_t *prow = a->out_packed + (n * PH + r) * PW * XWO;
        for (int64_t w = 0; w < PW; w++)
            for (int64_t wd = 0; wd < XWO; wd++) {
                const int64_t c0 = 32 * wd;
                uint32_t bits = (uint32_t)(_mm512_cmp_ps_mask(_mm512_loadu_ps(vals + w * COP + c0), zero, _CMP_NGE_UQ) & CBCN_MASK(c0));
                if (c0 + 16 < C)
                    bits |= (uint32_t)(_mm512_cmp_ps_mask(_mm512_loadu_ps(vals + w * COP + c0 + 16), zero, _CMP_NGE_UQ) & CBCN_MASK(c0 + 16)) << 16;
                prow[w * XWO + wd] = bits;
            }
    }
#undef CBCN_VALUE
#undef CBCN_MASK
}
#endif

#if !CBCN_AVX512
/* One final output row (n, r): one conv row, or two pooled into one. Buffers: sums 2·OW·COP
 * int32, vals COP floats. */
static void output_row(const cbcn_conv_params *a, int64_t n, int64_t r, int32_t *sums, float *vals) {
    const int64_t COP = ((a->C_out + LANES - 1) / LANES) * LANES, C = a->C_out;
    const int64_t PH = pooled_size(a->OH, a->pool), PW = pooled_size(a->OW, a->pool);
    if (!a->pool) {
        const int32_t *row = source_row(a, n, r, sums);
        for (int64_t ow = 0; ow < a->OW; ow++) {
            const int32_t *s = row + ow * COP;
            for (int64_t c = 0; c < C; c++) vals[c] = scaled(a, s[c], c);
            finish_pixel(a, n, r, ow, a->OH, a->OW, vals);
        }
        return;
    }
    const int two_rows = 2 * r + 1 < a->OH;
    const int32_t *row0 = source_row(a, n, 2 * r, sums);
    const int32_t *row1 = two_rows ? source_row(a, n, 2 * r + 1, sums + a->OW * COP) : NULL;
    for (int64_t pw = 0; pw < PW; pw++) {
        const int two_cols = 2 * pw + 1 < a->OW;
        const int32_t *s00 = row0 + (2 * pw) * COP, *s10 = two_rows ? row1 + (2 * pw) * COP : NULL;
        for (int64_t c = 0; c < C; c++) {
            float v = scaled(a, s00[c], c), t;
            if (a->pool == 2) { /* max over the window in MaxPool2d's scan order (row by row) */
                t = scaled(a, s00[COP + c], c); if (t > v) v = t;
                t = scaled(a, s10[c], c); if (t > v) v = t;
                t = scaled(a, s10[COP + c], c); if (t > v) v = t;
            } else { /* AvgPool2d: the sum in row-major order over the elements inside, / count */
                if (two_cols) v = v + scaled(a, s00[COP + c], c);
                if (two_rows) {
                    v = v + scaled(a, s10[c], c);
                    if (two_cols) v = v + scaled(a, s10[COP + c], c);
                }
                v = v / (float)((1 + two_rows) * (1 + two_cols));
            }
            vals[c] = v;
        }
        finish_pixel(a, n, r, pw, PH, PW, vals);
    }
}
#endif

/* The fused binary convolution. Returns 0, or a negative code for bad arguments / no memory. */
typedef struct { int32_t *row_class, *col_class, *corr; } border_classes;

static void free_border_tables(border_classes *b) {
    free(b->row_class);
    free(b->col_class);
    free(b->corr);
}

/* Class of each output row (or column): 0 where the whole window is inside, else 1 + the index of
 * its valid tap range [lo, hi) among the distinct ranges seen; ranges[2·i], ranges[2·i+1]. */
static int64_t classify(int64_t n_out, int64_t stride, int64_t pad, int64_t k, int64_t size, int32_t *cls,
                        int64_t *ranges) {
    int64_t n = 1;
    ranges[0] = 0;
    ranges[1] = k;
    for (int64_t o = 0; o < n_out; o++) {
        const int64_t start = o * stride - pad;
        const int64_t lo = max64(0, -start), hi = max64(lo, min64(k, size - start));
        int64_t c = 0;
        while (c < n && !(ranges[2 * c] == lo && ranges[2 * c + 1] == hi)) c++;
        if (c == n) { ranges[2 * n] = lo; ranges[2 * n + 1] = hi; n++; }
        cls[o] = (int32_t)c;
    }
    return n;
}

/* The padding correction tables of correct_border, from job->wsum. Returns 0 when out of memory. */
static int border_tables(cbcn_conv_params *job, border_classes *b) {
    const int64_t KH = job->KH, KW = job->KW, COB = (job->C_out + LANES - 1) / LANES, COP = COB * LANES;
    int64_t *rr = (int64_t *)malloc((size_t)(2 * (job->OH + 1)) * sizeof(int64_t));
    int64_t *cr = (int64_t *)malloc((size_t)(2 * (job->OW + 1)) * sizeof(int64_t));
    b->row_class = (int32_t *)malloc((size_t)(job->OH + 1) * sizeof(int32_t));
    b->col_class = (int32_t *)malloc((size_t)(job->OW + 1) * sizeof(int32_t));
    if (!rr || !cr || !b->row_class || !b->col_class) { free(rr); free(cr); return 0; }
    const int64_t nr = classify(job->OH, job->stride, job->pad, KH, job->H, b->row_class, rr);
    const int64_t nc = classify(job->OW, job->stride, job->pad, KW, job->W, b->col_class, cr);
    b->corr = (int32_t *)calloc((size_t)(nr * nc * COP), sizeof(int32_t));
    if (!b->corr) { free(rr); free(cr); return 0; }
    for (int64_t ri = 0; ri < nr; ri++)
        for (int64_t ci = 0; ci < nc; ci++) {
            int32_t *corr = b->corr + (ri * nc + ci) * COP;
            for (int64_t kh = 0; kh < KH; kh++)
                for (int64_t kw = 0; kw < KW; kw++) {
                    if (kh >= rr[2 * ri] && kh < rr[2 * ri + 1] && kw >= cr[2 * ci] && kw < cr[2 * ci + 1]) continue;
                    for (int64_t cob = 0; cob < COB; cob++)
                        for (int l = 0; l < LANES; l++)
                            corr[cob * LANES + l] += job->wsum[((cob * KH + kh) * KW + kw) * LANES + l];
                }
        }
    free(rr);
    free(cr);
    job->row_class = b->row_class;
    job->col_class = b->col_class;
    job->corr = b->corr;
    job->n_col_classes = nc;
    return 1;
}

static void output_row_any(const cbcn_conv_params *a, int64_t n, int64_t r, int32_t *sums, float *vals) {
#if CBCN_AVX512
    output_row_avx512(a, n, r, sums, vals);
#else
    output_row(a, n, r, sums, vals);
#endif
}

/* Copies plane-major (N, C, H, W)-strided image n into a pixel-major (H·W, COP) buffer, or back:
 * NCHW planes are read / written one plane at a time, in contiguous runs. */
#if CBCN_AVX512
/* In-register transpose of a 16x16 float tile (rows r[0..15] become its columns). */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
        __m512d a2 = _mm512_castps_pd(t[4 * i + 2]), a3 = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
}
#endif

static void stage_image(float *staged, const float *t, int64_t n, int64_t C, int64_t H, int64_t W, int64_t COP,
                        int64_t sn, int64_t sc, int64_t sh, int64_t sw, int to_staged) {
    const int64_t P = H * W;
    int64_t p0 = 0;
#if CBCN_AVX512
    if (sw == 1 && sh == W) { /* contiguous planes: 16 pixels x 16 channels per in-register transpose */
        __m512 r[16];
        const int64_t P16 = P - P % 16;
        /* channel blocks outside: 16 sequential streams through 16 planes, which the prefetchers
         * follow (pixel blocks outside would interleave all C planes at once) */
        for (int64_t c0 = 0; c0 < C; c0 += 16)
            for (p0 = 0; p0 < P16; p0 += 16) {
                const int64_t nc = min64(16, C - c0);
                const float *plane = t + n * sn + c0 * sc + p0;
                if (to_staged) {
                    for (int i = 0; i < 16; i++) r[i] = i < nc ? _mm512_loadu_ps(plane + i * sc) : _mm512_setzero_ps();
                    transpose16(r);
                    for (int j = 0; j < 16; j++) _mm512_storeu_ps(staged + (p0 + j) * COP + c0, r[j]);
                } else {
                    for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_ps(staged + (p0 + j) * COP + c0);
                    transpose16(r);
                    for (int i = 0; i < nc; i++) _mm512_storeu_ps((float *)plane + i * sc, r[i]);
                }
            }
        p0 = P16;
    }
#endif
    for (int64_t c = 0; c < C; c++) { /* the rest (or everything without AVX-512), element by element */
        float *plane = (float *)t + n * sn + c * sc;
        for (int64_t p = p0; p < P; p++) {
            float *e = plane + (p / W) * sh + (p % W) * sw;
            if (to_staged) staged[p * COP + c] = *e; else *e = staged[p * COP + c];
        }
    }
}

/* The fused binary convolution. Returns 0, or a negative code for bad arguments / no memory.
 * Work is split by output rows; where the source, the residual or the output has non-contiguous
 * channels (NCHW), by images instead, each staged pixel-major through a buffer of its own. */
int cbcn_binary_conv(const cbcn_conv_params *a) {
    if (!a || a->C_out < 1 || a->OH < 0 || a->OW < 0) return -1;
    if (!a->src && (!a->x || !a->w || a->XW < 1 || a->C_in < 1 || a->stride < 1 || a->pad < 0)) return -1;
    if (a->pool != 0 && a->pool != 2 && a->pool != 3) return -1;
    if (a->bn_mul && !a->bn_add) return -1;
    const int64_t COP = ((a->C_out + LANES - 1) / LANES) * LANES;
    const int64_t rows = pooled_size(a->OH, a->pool);
    const int64_t PH = rows, PW = pooled_size(a->OW, a->pool);
    cbcn_conv_params job = *a; /* with the halo and the weight sums */
    uint32_t *halo = NULL, *pairs = NULL;
    (void)pairs; /* used by the BITALG build only */
    border_classes classes = {NULL, NULL, NULL};
    int32_t *wsum = NULL;
    if (!a->src) {
        const int64_t HP = a->H + 2 * a->pad, WP = a->W + 2 * a->pad, XW = a->XW, COB = COP / LANES;
        job.HP = HP;
        job.WP = WP;
        if (a->pad == 0) {
            job.xh = a->x;
        } else {
            halo = (uint32_t *)scratch(SCRATCH_HALO, (size_t)(a->N * HP * WP * XW) * sizeof(uint32_t));
            if (!halo) return -2;
            const size_t row_words = (size_t)(WP * XW), pad_words = (size_t)(a->pad * XW);
            for (int64_t n = 0; n < a->N; n++) {
                uint32_t *img = halo + n * HP * WP * XW;
                memset(img, 0, (size_t)a->pad * row_words * sizeof(uint32_t)); /* the top and bottom rows */
                memset(img + (HP - a->pad) * row_words, 0, (size_t)a->pad * row_words * sizeof(uint32_t));
                for (int64_t h = 0; h < a->H; h++) {
                    uint32_t *row = img + (h + a->pad) * row_words;
                    memset(row, 0, pad_words * sizeof(uint32_t)); /* the left and right columns */
                    memcpy(row + pad_words, a->x + (n * a->H + h) * a->W * XW, (size_t)(a->W * XW) * sizeof(uint32_t));
                    memset(row + pad_words + a->W * XW, 0, pad_words * sizeof(uint32_t));
                }
            }
            job.xh = halo;
        }
        wsum = (int32_t *)scratch(SCRATCH_WSUM, (size_t)(COB * a->KH * a->KW * LANES) * sizeof(int32_t));
        if (!wsum) return -2;
        for (int64_t t = 0; t < COB * a->KH * a->KW; t++)
            for (int l = 0; l < LANES; l++) {
                int32_t bits = 0;
                for (int64_t wd = 0; wd < XW; wd++) bits += __builtin_popcount(a->w[(t * XW + wd) * LANES + l]);
                wsum[t * LANES + l] = (int32_t)a->C_in - 2 * bits;
            }
        job.wsum = wsum;
        if (a->pad > 0 && !border_tables(&job, &classes)) return -2;
#if CBCN_PAIRS
        if (a->C_in <= 16 && XW == 1) { /* the pair words of every haloed row, once per call */
            const int64_t st = a->stride, total = a->N * HP * WP;
            pairs = (uint32_t *)scratch(SCRATCH_PAIRS, (size_t)total * sizeof(uint32_t));
            if (!pairs) { free_border_tables(&classes); return -2; }
            for (int64_t row = 0; row < a->N * HP; row++) {
                const uint32_t *xr = job.xh + row * WP;
                uint32_t *pr = pairs + row * WP;
                int64_t j = 0;
                for (; j + st < WP; j++) pr[j] = xr[j] | (xr[j + st] << 16);
                for (; j < WP; j++) pr[j] = xr[j];
            }
            job.pairs = pairs;
        }
#endif
    }
    a = &job;
    const int stage_src = a->src && a->ss_c != 1, stage_res = a->residual && a->rs_c != 1;
    const int stage_out = a->out && a->os_c != 1, by_image = stage_src || stage_res || stage_out;
    const int64_t work = by_image ? a->N : a->N * rows;
    const size_t sums_bytes = (size_t)2 * a->OW * COP * sizeof(int32_t);
    const size_t vals_bytes = (size_t)2 * a->OW * COP * sizeof(float);
    const size_t src_bytes = stage_src ? (size_t)a->OH * a->OW * COP * sizeof(float) : 1;
    const size_t img_bytes = (stage_res || stage_out) ? (size_t)PH * PW * COP * sizeof(float) : 1;
    int failed = 0;
#ifdef _OPENMP
    const int threads = a->threads > 1 ? (int)a->threads : 1;
#pragma omp parallel num_threads(threads) reduction(| : failed)
#endif
    {
        int32_t *sums = (int32_t *)scratch(SCRATCH_SUMS, sums_bytes);
        float *vals = (float *)scratch(SCRATCH_VALS, vals_bytes);
        float *src_img = (float *)scratch(SCRATCH_SRC, src_bytes), *res_img = (float *)scratch(SCRATCH_RES, img_bytes);
        float *out_img = (float *)scratch(SCRATCH_OUT, img_bytes);
        if (!sums || !vals || !src_img || !res_img || !out_img) {
            failed = 1;
        } else {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t i = 0; i < work; i++) {
                if (!by_image) {
                    output_row_any(a, i / rows, i % rows, sums, vals);
                    continue;
                }
                cbcn_conv_params b = *a; /* image i, with its staged buffers in place of NCHW tensors */
                if (stage_src) {
                    stage_image(src_img, a->src, i, a->C_out, a->OH, a->OW, COP, a->ss_n, a->ss_c, a->ss_h, a->ss_w, 1);
                    b.src = src_img - i * a->OH * a->OW * COP;
                    b.ss_n = a->OH * a->OW * COP; b.ss_c = 1; b.ss_h = a->OW * COP; b.ss_w = COP;
                }
                if (stage_res) {
                    stage_image(res_img, a->residual, i, a->C_out, PH, PW, COP, a->rs_n, a->rs_c, a->rs_h, a->rs_w, 1);
                    b.residual = res_img - i * PH * PW * COP;
                    b.rs_n = PH * PW * COP; b.rs_c = 1; b.rs_h = PW * COP; b.rs_w = COP;
                }
                if (stage_out) {
                    b.out = out_img - i * PH * PW * COP;
                    b.os_n = PH * PW * COP; b.os_c = 1; b.os_h = PW * COP; b.os_w = COP;
                }
                for (int64_t r = 0; r < rows; r++) output_row_any(&b, i, r, sums, vals);
                if (stage_out) stage_image(out_img, a->out, i, a->C_out, PH, PW, COP, a->os_n, a->os_c, a->os_h, a->os_w, 0);
            }
        }
    }
    free_border_tables(&classes);
    return failed ? -2 : 0;
}

/* Packs the signs of a float tensor (N, C, H, W) with any strides into (N, H, W, ceil(C/32)). */
int cbcn_pack_signs_f32(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sn, int64_t sc,
                        int64_t sh, int64_t sw, uint32_t *out, int64_t threads) {
    if (!x || !out || N < 0 || C < 1 || H < 0 || W < 0) return -1;
    const int64_t XW = (C + 31) / 32;
    int failed = 0;
    (void)threads;
#ifdef _OPENMP
    const int nt = threads > 1 ? (int)threads : 1;
#pragma omp parallel num_threads(nt) reduction(| : failed)
#endif
    {
        float *vals = sc == 1 ? NULL : (float *)malloc((size_t)C * sizeof(float));
        if (sc != 1 && !vals) {
            failed = 1;
        } else if (sc == 1) { /* channels-last: each pixel's channels are contiguous */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t i = 0; i < N * H; i++) {
                const int64_t n = i / H, h = i % H;
                for (int64_t w = 0; w < W; w++)
                    pack_row_signs(x + n * sn + h * sh + w * sw, C, out + ((n * H + h) * W + w) * XW);
            }
        } else if (sw == 1) { /* NCHW rows: 16 pixels x 32 channels per step, vectorised over pixels */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t i = 0; i < N * H; i++) {
                const int64_t n = i / H, h = i % H;
                uint32_t *o = out + (n * H + h) * W * XW;
                for (int64_t wd = 0; wd < XW; wd++) {
                    const int64_t c0 = wd * 32, c1 = min64(C, c0 + 32);
                    int64_t w = 0;
#if CBCN_AVX512
                    const __m512 zero = _mm512_setzero_ps();
                    const __m512i step = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                            _mm512_set1_epi32((int)XW));
                    for (; w + 16 <= W; w += 16) {
                        __m512i acc = _mm512_setzero_si512();
                        for (int64_t c = c0; c < c1; c++) {
                            const __mmask16 neg = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + n * sn + c * sc + h * sh + w), zero, _CMP_NGE_UQ);
                            acc = _mm512_mask_or_epi32(acc, neg, acc, _mm512_set1_epi32((int)(1u << (c - c0))));
                        }
                        if (XW == 1) _mm512_storeu_si512((void *)(o + w), acc);
                        else _mm512_i32scatter_epi32((void *)(o + w * XW + wd), step, acc, 4);
                    }
#endif
                    for (; w < W; w++) {
                        uint32_t bits = 0;
                        for (int64_t c = c0; c < c1; c++) bits |= (uint32_t)(!(x[n * sn + c * sc + h * sh + w] >= 0.0f)) << (c - c0);
                        o[w * XW + wd] = bits;
                    }
                }
            }
        } else {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t i = 0; i < N * H; i++) {
                const int64_t n = i / H, h = i % H;
                for (int64_t w = 0; w < W; w++) {
                    for (int64_t c = 0; c < C; c++) vals[c] = x[n * sn + c * sc + h * sh + w * sw];
                    pack_row_signs(vals, C, out + ((n * H + h) * W + w) * XW);
                }
            }
        }
        free(vals);
    }
    return failed ? -2 : 0;
}

/* This machine's peak for the kernel's arithmetic: `iters` rounds of the inner loop's own
 * instruction mix (a broadcast load, XOR, popcount, add) on 8 independent accumulators, from a
 * tiny L1-resident buffer. Returns the binary multiply-accumulates done (bits compared), for the
 * caller to divide by the time taken. */
int64_t cbcn_popcount_peak(int64_t iters) {
    uint32_t buf[64];
    for (int i = 0; i < 64; i++) buf[i] = (uint32_t)i * 0x9e3779b9u;
#if CBCN_AVX512
    __m512i acc[8];
    const __m512i w = _mm512_set1_epi32((int)0x5a5a5a5a);
    for (int i = 0; i < 8; i++) acc[i] = _mm512_setzero_si512();
    for (int64_t it = 0; it < iters; it++) {
        const uint32_t *xp = buf + (it & 7) * 8;
        for (int i = 0; i < 8; i++)
            acc[i] = _mm512_add_epi32(acc[i], _mm512_popcnt_epi32(_mm512_xor_si512(_mm512_set1_epi32((int)xp[i]), w)));
    }
    int32_t sink[16];
    __m512i total = acc[0];
    for (int i = 1; i < 8; i++) total = _mm512_add_epi32(total, acc[i]);
    _mm512_storeu_si512((void *)sink, total);
    volatile int32_t keep = sink[0];
    (void)keep;
    return iters * 8 * 512;
#else
    uint32_t acc[8] = {0};
    for (int64_t it = 0; it < iters; it++) {
        const uint32_t *xp = buf + (it & 7) * 8;
        for (int i = 0; i < 8; i++) acc[i] += (uint32_t)__builtin_popcount(xp[i] ^ 0x5a5a5a5au);
    }
    volatile uint32_t keep = acc[0] + acc[7];
    (void)keep;
    return iters * 8 * 32;
#endif
}
