/* The CPU engine's native kernels: XNOR + popcount binary convolution over packed signs, with
 * the layer's whole epilogue fused, and sign packing of float tensors. Written once over the
 * vector operations of simd.h and compiled once per instruction-set variant (native.py).
 *
 * Packing contract (docs/CONTRACTS.md): a bit is set where the value is negative (NaN included),
 * 32 channels per uint32 word, channel c in word c/32 at bit c%32, pixels NHWC; padding bits 0.
 *
 * For ±1 vectors a, b of n channels packed that way, a·b = n − 2·popcount(a XOR b); padding bits
 * are 0 in both operands and so never count. Zero padding of the convolution (a 0, not a −1) is
 * handled by convolving a zero-bit halo (+1 everywhere) and subtracting, per border pixel, the
 * weight sums of its taps outside the image. The sums are exact integers, as in
 * cbcn.onebit.backends.reference.
 *
 * The epilogue (cbcn.onebit.backends.epilogue.Epilogue, in its fixed order):
 *   v = sum · scale (+ bias)  ->  2×2 max- or average pool  ->  ReLU  ->  batch-norm  ->  + residual
 * each step rounded separately (this file is compiled with -ffp-contract=off), except that the
 * batch-norm is one fused multiply-add when bn_fma is set — what PyTorch's CPU batch-norm does,
 * which the Python side checks against torch before it lets this code fuse a batch-norm.
 * Outputs: the float result (any strides) and/or its packed signs, for the next binary layer.
 *
 * The inner loop (conv_block): for a block of up to PIX_BLOCK output pixels of one row and LANES
 * output channels, each weight vector (one word of LANES output channels' filters) is loaded
 * once and XORed with each pixel's broadcast input word; the bit counts of the results
 * accumulate per lane. Layers of <= 16 input channels put two output pixels in each 32-bit word
 * (pixel pairs), where the variant's counts stay within 16-bit halves.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "bconv.h"
#include "simd.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_PIX_BLOCK 8
#define STREAM_BYTES ((int64_t)2 << 20) /* float outputs larger than a core's L2: non-temporal stores */
#ifndef PIX_BLOCK
#define PIX_BLOCK MAX_PIX_BLOCK /* output pixels (or pixel pairs) sharing each weight vector load (simd.h may set fewer) */
#endif


/* One call's working state: the caller's parameters and what is derived from them once. */
typedef struct {
    cbcn_conv_params p;
    int64_t COP;            /* C_out rounded up to LANES */
    int pairs;              /* two output pixels per word (pair_mode) */
    const uint32_t *xd;     /* input digit words over the zero halo, per image (HP, WP, XD), image n at xd + n·xd_n */
    int64_t HP, WP, XD, xd_n; /* haloed height and width; digit words per haloed pixel (XW·DIGITS, pairs DIGITS);
                               * the image stride (0: one image's buffer, reused per image) */
    const uint32_t *wd;     /* weight digits (COB, T, DIGITS, LANES) */
    const int32_t *wsum;    /* (COB, KH·KW, LANES): Σ_c of each tap's ±1 weights */
    int64_t T;              /* words per output pixel and lane: KH·KW·XW (pairs: KH·KW) */
    const int32_t *xoff;    /* (T): offset of word t's digits in the window, in digit words */
    const int32_t *row_class, *col_class; /* border class of each output row / column (0: inside) */
    const int32_t *corr;    /* (row classes, col classes, COP): the padding correction of each class */
    int64_t n_col_classes;
    const float *scale, *bias, *bn_mul, *bn_add; /* the per-channel vectors padded with 0 to COP, or NULL */
    int stream_out;         /* write the float output with non-temporal stores (too large to stay cached) */
} conv_job;

int cbcn_abi_version(void) { return CBCN_ABI_VERSION; }
const char *cbcn_variant(void) { return VARIANT_NAME; }
int cbcn_lanes(void) { return LANES; }

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
/* Output size along one axis after the epilogue's pooling (see `pool`). */
static inline int64_t pooled_size(int64_t n, int64_t pool) { return pool == 2 ? n / 2 : pool == 3 ? (n + 1) / 2 : n; }
/* Whether a layer runs in pixel pairs: one half-word of input signs per pixel. */
static inline int pair_mode(int64_t C_in) { return CAN_PAIR && C_in <= 16; }

/* Per-thread scratch buffers kept between calls: a fresh malloc of a few hundred KB per layer is
 * an mmap and a page fault per 4 KB on every call (glibc's default), which costs as much as a
 * small layer's arithmetic. Slot i of the calling thread grows as needed and is never freed
 * (a few MB at most per thread). Contents are not preserved between uses. */
enum { SCRATCH_DIGITS, SCRATCH_XOFF, SCRATCH_VECTORS, SCRATCH_SUMS, SCRATCH_VALS, SCRATCH_SRC, SCRATCH_RES,
       SCRATCH_OUT, SCRATCH_SLOTS };
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

/* ---------------------------------------------------------------------------------------------
 * The bank, prepared once per weight tensor (cached by the caller): the weight digits in the
 * order the inner loop reads them, then the weight sums of each tap for the border correction.
 * ------------------------------------------------------------------------------------------- */
static int64_t bank_words(int64_t C_out, int64_t C_in, int64_t KH, int64_t KW) {
    const int64_t XW = (C_in + 31) / 32, COB = (C_out + LANES - 1) / LANES;
    const int64_t T = KH * KW * (pair_mode(C_in) ? 1 : XW);
    return COB * T * DIGITS * LANES + COB * KH * KW * LANES;
}

/* Words (uint32) cbcn_prepare_weights writes for a layer of this shape. */
int64_t cbcn_prepared_words(int64_t C_out, int64_t C_in, int64_t KH, int64_t KW) {
    return bank_words(C_out, C_in, KH, KW);
}

/* The bank (C_out, KH, KW, XW) packed as the contract says -> this variant's layout. */
int cbcn_prepare_weights(const uint32_t *w, int64_t C_out, int64_t C_in, int64_t KH, int64_t KW, uint32_t *out) {
    if (!w || !out || C_out < 1 || C_in < 1 || KH < 1 || KW < 1) return -1;
    const int64_t XW = (C_in + 31) / 32, COB = (C_out + LANES - 1) / LANES, pairs = pair_mode(C_in);
    const int64_t T = KH * KW * (pairs ? 1 : XW);
    uint32_t *wd = out;
    int32_t *wsum = (int32_t *)(out + COB * T * DIGITS * LANES);
    for (int64_t cob = 0; cob < COB; cob++)
        for (int64_t tap = 0; tap < KH * KW; tap++)
            for (int l = 0; l < LANES; l++) {
                const int64_t co = cob * LANES + l;
                int32_t bits = 0;
                for (int64_t x = 0; x < (pairs ? 1 : XW); x++) {
                    uint32_t word = co < C_out ? w[(co * KH * KW + tap) * XW + x] : 0; /* padding channels: 0 */
                    bits += __builtin_popcount(word);
                    if (pairs) word = (word & 0xFFFFu) | (word << 16); /* the same filter for both pixels */
                    uint32_t d[DIGITS];
                    split_digits(word, d);
                    const int64_t t = tap * (pairs ? 1 : XW) + x;
                    for (int k = 0; k < DIGITS; k++) wd[((cob * T + t) * DIGITS + k) * LANES + l] = d[k];
                }
                wsum[(cob * KH * KW + tap) * LANES + l] = co < C_out ? (int32_t)C_in - 2 * bits : 0;
            }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The convolution sums.
 * ------------------------------------------------------------------------------------------- */
/* Writes (first chunk) or adds (later chunks) one chunk's counts, and on the last chunk turns
 * the total into the conv sum n_all − 2·count. */
static inline void emit_counts(int32_t *dst, VI count, int first, int last, VI n_all) {
    VI total = first ? count : vi_add32(vi_load(dst), count);
    if (last) total = vi_sub32(n_all, vi_slli32(total, 1));
    vi_store(dst, total);
}

/* Conv sums of NP output pixels (PAIRS: 2·NP pixels in NP pair words) of one output row, over
 * the zero-haloed input (halo bits 0, i.e. +1; conv_row corrects the border pixels): `xwin` is
 * the first pixel's window origin, `pstep` the digit-word step between the blocked pixels;
 * sums[p·COP + co] = KH·KW·C_in − 2·Σ popcount. NP and PAIRS are compile-time constants here
 * (inlined per value), so the NP counters stay in registers. */
static inline __attribute__((always_inline)) void conv_block(const conv_job *j, const uint32_t *xwin, int64_t pstep,
                                                             const int NP, const int PAIRS, int32_t *sums) {
    COUNT_SETUP;
    const int64_t T = j->T, COP = j->COP, COB = COP / LANES;
    const VI n_all = vi_set1(j->p.KH * j->p.KW * j->p.C_in);
#if CAN_PAIR
    const int64_t limit = PAIRS ? CNT16_LIMIT : CNT_LIMIT;
#else
    const int64_t limit = CNT_LIMIT;
    (void)PAIRS;
#endif
    for (int64_t cob = 0; cob < COB; cob++) {
        const uint32_t *wp = j->wd + cob * T * DIGITS * LANES;
        for (int64_t i0 = 0; i0 < T; i0 += limit) {
            const int64_t i1 = min64(T, i0 + limit);
            VI cnt[MAX_PIX_BLOCK];
            for (int p = 0; p < NP; p++) cnt[p] = vi_zero();
            for (int64_t i = i0; i < i1; i++) {
                const uint32_t *xi = xwin + j->xoff[i];
                const VI w0 = vi_load(wp + i * DIGITS * LANES);
#if DIGITS == 2 /* both digits of a word per pixel: one count add per pixel and word */
                const VI w1 = vi_load(wp + i * DIGITS * LANES + LANES);
#define CBCN_WORD_COUNT(CNT_, ADD_, p) ADD_(CNT_(vi_xor(vi_bcast(xi + (p) * pstep), w0)), CNT_(vi_xor(vi_bcast(xi + (p) * pstep + 1), w1)))
#else
#define CBCN_WORD_COUNT(CNT_, ADD_, p) CNT_(vi_xor(vi_bcast(xi + (p) * pstep), w0))
#endif
#if CAN_PAIR
                if (PAIRS) {
                    for (int p = 0; p < NP; p++) cnt[p] = CNT16_ADD(cnt[p], CBCN_WORD_COUNT(CNT16, CNT16_ADD, p));
                    continue;
                }
#endif
                for (int p = 0; p < NP; p++) cnt[p] = CNT_ADD(cnt[p], CBCN_WORD_COUNT(CNT, CNT_ADD, p));
#undef CBCN_WORD_COUNT
            }
            const int first = i0 == 0, last = i1 == T;
            for (int p = 0; p < NP; p++) {
#if CAN_PAIR
                if (PAIRS) { /* 16-bit halves: the pair's first pixel low, its second high */
                    const VI halves = WIDEN16(cnt[p]);
                    emit_counts(sums + (2 * p) * COP + cob * LANES, vi_and(halves, vi_set1(0xFFFF)), first, last, n_all);
                    emit_counts(sums + (2 * p + 1) * COP + cob * LANES, vi_srli32(halves, 16), first, last, n_all);
                    continue;
                }
#endif
                emit_counts(sums + p * COP + cob * LANES, WIDEN32(cnt[p]), first, last, n_all);
            }
        }
    }
}

/* conv_block for a run-time block size np (single pixels, or pixel pairs where PAIRS). */
static void conv_pixels(const conv_job *j, const uint32_t *xwin, int64_t pstep, int64_t np, int pairs, int32_t *sums) {
    switch (2 * np + (pairs != 0)) {
#if CAN_PAIR
#define CBCN_NP(n) case 2 * n: conv_block(j, xwin, pstep, n, 0, sums); break; \
                   case 2 * n + 1: conv_block(j, xwin, pstep, n, 1, sums); break;
#else
#define CBCN_NP(n) case 2 * n: conv_block(j, xwin, pstep, n, 0, sums); break;
#endif
        CBCN_NP(1) CBCN_NP(2) CBCN_NP(3) CBCN_NP(4) CBCN_NP(5) CBCN_NP(6) CBCN_NP(7) CBCN_NP(8)
#undef CBCN_NP
        default: break;
    }
}

/* Zero padding: the halo counted each of its taps as +1 (bits 0), adding the tap's weight sum
 * Σ_c w[co][c][kh][kw]; subtract, per border pixel, the sum over its taps outside the image. Those
 * sums depend only on which taps are out, so cbcn_binary_conv tabulates them per class of rows
 * and columns (top / bottom / left / right edges, corners): corr[row class][col class][COP]. */
static void correct_border(const conv_job *j, int64_t oh, int32_t *sums) {
    const int64_t COP = j->COP;
    const int32_t rc = j->row_class[oh];
    for (int64_t ow = 0; ow < j->p.OW; ow++) {
        const int32_t cc = j->col_class[ow];
        if (rc == 0 && cc == 0) continue;
        const int32_t *corr = j->corr + ((int64_t)rc * j->n_col_classes + cc) * COP;
        int32_t *sp = sums + ow * COP;
        for (int64_t i = 0; i < COP; i += LANES) vi_store(sp + i, vi_sub32(vi_load(sp + i), vi_load(corr + i)));
    }
}

/* Conv sums of output row oh of image n: sums (OW, COP). */
static void conv_row(const conv_job *j, int64_t n, int64_t oh, int32_t *sums) {
    const int64_t COP = j->COP, s = j->p.stride, OW = j->p.OW, XD = j->XD;
    const uint32_t *x_img = j->xd + n * j->xd_n + oh * s * j->WP * XD; /* the windows' first haloed row */
    int64_t ow = 0;
#if CAN_PAIR
    if (j->pairs) { /* an odd last pixel's pair also writes the pixel after the row: sums has room for it */
        for (; ow < OW;) {
            const int64_t np = min64(PIX_BLOCK, (OW - ow + 1) / 2);
            conv_pixels(j, x_img + ow * s * XD, 2 * s * XD, np, 1, sums + ow * COP);
            ow += 2 * np;
        }
    }
#endif
    for (; ow < OW;) {
        const int64_t np = min64(PIX_BLOCK, OW - ow);
        conv_pixels(j, x_img + ow * s * XD, s * XD, np, 0, sums + ow * COP);
        ow += np;
    }
    if (j->p.pad) correct_border(j, oh, sums);
}

/* ---------------------------------------------------------------------------------------------
 * The epilogue.
 * ------------------------------------------------------------------------------------------- */
/* Row r of the epilogue's input, as (OW, COP) 4-byte values: the conv sums (int32, computed into
 * buf), or with a float source its values (float bits) — read in place where the source already
 * has that layout (a staged image), else gathered into buf. */
static const int32_t *source_row(const conv_job *j, int64_t n, int64_t r, int32_t *buf) {
    const cbcn_conv_params *a = &j->p;
    if (!a->src) {
        conv_row(j, n, r, buf);
        return buf;
    }
    const int64_t COP = j->COP;
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

/* Packs the signs of v[0..C) into words (bit set iff !(v >= 0)), padding bits 0. */
static inline void pack_row_signs(const float *v, int64_t C, uint32_t *words) {
    for (int64_t c0 = 0; c0 < C; c0 += 32) {
        uint32_t bits = 0;
        for (int64_t k = 0; k < 32 / LANES && c0 + k * LANES < C; k++) {
            const int64_t c = c0 + k * LANES, n = min64(LANES, C - c);
            const VF v8 = n == LANES ? vf_load(v + c) : vf_load_part(v + c, n);
            bits |= (vf_negbits(v8) & (uint32_t)((1ull << n) - 1)) << (k * LANES);
        }
        words[c0 / 32] = bits;
    }
}

/* The epilogue of one output row runs as a few passes over the row's values `vals` (PW, COP),
 * kept in L1: each pass is one step for every pixel and channel, a tight loop with no per-value
 * test, and steps the layer does not have are skipped once per row. */

/* One conv (or source) value of channel vector c0 with the scale and bias: compile-time
 * FLOAT / SCALE / BIAS, so that each instantiation's loop holds only its own operations. */
static inline __attribute__((always_inline)) VF scaled_value(const int32_t *p, const float *scale, const float *bias,
                                                             int64_t c0, const int FLOAT, const int SCALE,
                                                             const int BIAS) {
    const VI raw = vi_load(p + c0);
    VF v;
    if (FLOAT) v = vf_from_bits(raw); else v = vf_from_int(raw);
    if (SCALE) v = vf_mul(v, vf_load(scale + c0));
    if (BIAS) v = vf_add(v, vf_load(bias + c0));
    return v;
}

/* Pass 1: v = value · scale (+ bias), pooled over the window (rows row0 and row1 of (OW, COP)). */
static inline __attribute__((always_inline)) void values_pass(const conv_job *j, const int32_t *row0,
                                                              const int32_t *row1, int two_rows, float *vals,
                                                              const int FLOAT, const int SCALE, const int BIAS,
                                                              const int POOL) {
    const int64_t COP = j->COP, OW = j->p.OW, PW = pooled_size(OW, POOL);
    const float *scale = j->scale, *bias = j->bias;
#define CBCN_V(ptr, c0) scaled_value((ptr), scale, bias, (c0), FLOAT, SCALE, BIAS)
    for (int64_t w = 0; w < PW; w++) {
        const int32_t *s00 = row0 + (POOL ? 2 * w : w) * COP, *s10 = row1 + 2 * w * COP;
        float *out = vals + w * COP;
        if (POOL == 0) {
            for (int64_t c0 = 0; c0 < COP; c0 += LANES) vf_store(out + c0, CBCN_V(s00, c0));
        } else if (POOL == 2) { /* max over the window in MaxPool2d's scan order (row by row) */
            for (int64_t c0 = 0; c0 < COP; c0 += LANES) {
                VF v = CBCN_V(s00, c0);
                v = vf_max(CBCN_V(s00 + COP, c0), v);
                v = vf_max(CBCN_V(s10, c0), v);
                v = vf_max(CBCN_V(s10 + COP, c0), v);
                vf_store(out + c0, v);
            }
        } else { /* average: the sum in row-major order over the elements inside, / count */
            const int two_cols = 2 * w + 1 < OW;
            const VF count = vf_set1((float)((1 + two_rows) * (1 + two_cols)));
            for (int64_t c0 = 0; c0 < COP; c0 += LANES) {
                VF v = CBCN_V(s00, c0);
                if (two_cols) v = vf_add(v, CBCN_V(s00 + COP, c0));
                if (two_rows) {
                    v = vf_add(v, CBCN_V(s10, c0));
                    if (two_cols) v = vf_add(v, CBCN_V(s10 + COP, c0));
                }
                vf_store(out + c0, vf_div(v, count));
            }
        }
    }
#undef CBCN_V
}

static void values_row(const conv_job *j, const int32_t *row0, const int32_t *row1, int two_rows, float *vals) {
    const int key = (j->p.src != NULL) * 4 + (j->scale != NULL) * 2 + (j->bias != NULL);
    switch ((int)j->p.pool * 8 + key) {
#define CBCN_VP(pool, f, s, b) case pool * 8 + f * 4 + s * 2 + b: values_pass(j, row0, row1, two_rows, vals, f, s, b, pool); break;
#define CBCN_VPS(pool) CBCN_VP(pool, 0, 0, 0) CBCN_VP(pool, 0, 0, 1) CBCN_VP(pool, 0, 1, 0) CBCN_VP(pool, 0, 1, 1) \
        CBCN_VP(pool, 1, 0, 0) CBCN_VP(pool, 1, 0, 1) CBCN_VP(pool, 1, 1, 0) CBCN_VP(pool, 1, 1, 1)
        CBCN_VPS(0) CBCN_VPS(2) CBCN_VPS(3)
#undef CBCN_VPS
#undef CBCN_VP
        default: break;
    }
}

/* One final output row (n, r): one conv row, or two pooled into one. `sums` holds (2·OW + 1)·COP
 * values, `vals` PW·COP floats. The source, residual and output have contiguous channels
 * (cbcn_binary_conv stages NCHW tensors per image first: a channel-vector scatter over NCHW
 * planes thrashes the cache). */
static void output_row(const conv_job *j, int64_t n, int64_t r, int32_t *sums, float *vals) {
    const cbcn_conv_params *a = &j->p;
    const int64_t COP = j->COP, C = a->C_out, XWO = (C + 31) / 32;
    const int64_t PH = pooled_size(a->OH, a->pool), PW = pooled_size(a->OW, a->pool), total = PW * COP;
    const int64_t CF = C - C % LANES; /* channels in whole vectors */
    const int two_rows = a->pool && 2 * r + 1 < a->OH; /* avg2's last window may have one row */
    const int32_t *row0 = source_row(j, n, a->pool ? 2 * r : r, sums);
    const int32_t *row1 = two_rows ? source_row(j, n, 2 * r + 1, sums + a->OW * COP) : row0;
    if (a->residual && r + 1 < PH) /* the next row's residual, a stream from memory: fetched while this row computes */
        for (int64_t b = 0; b < PW * a->rs_w * (int64_t)sizeof(float); b += 64)
            __builtin_prefetch((const char *)(a->residual + n * a->rs_n + (r + 1) * a->rs_h) + b);
    /* 1. scale, bias and the pooling */
    values_row(j, row0, row1, two_rows, vals);
    /* 2. ReLU */
    if (a->relu)
        for (int64_t i = 0; i < total; i += LANES) vf_store(vals + i, vf_relu(vf_load(vals + i)));
    /* 3. batch-norm */
    if (j->bn_mul) {
        for (int64_t w = 0; w < PW; w++) {
            float *v = vals + w * COP;
            if (a->bn_fma)
                for (int64_t c0 = 0; c0 < COP; c0 += LANES)
                    vf_store(v + c0, vf_fma(vf_load(v + c0), vf_load(j->bn_mul + c0), vf_load(j->bn_add + c0)));
            else
                for (int64_t c0 = 0; c0 < COP; c0 += LANES)
                    vf_store(v + c0, vf_add(vf_mul(vf_load(v + c0), vf_load(j->bn_mul + c0)), vf_load(j->bn_add + c0)));
        }
    }
    /* 4. the residual */
    if (a->residual) {
        const float *res_row = a->residual + n * a->rs_n + r * a->rs_h;
        for (int64_t w = 0; w < PW; w++) {
            float *v = vals + w * COP;
            const float *rp = res_row + w * a->rs_w;
            for (int64_t c0 = 0; c0 < CF; c0 += LANES) vf_store(v + c0, vf_add(vf_load(v + c0), vf_load(rp + c0)));
            if (CF < C) vf_store(v + CF, vf_add(vf_load(v + CF), vf_load_part(rp + CF, C - CF)));
        }
    }
    /* 5. the float output */
    if (a->out) {
        float *out_row = a->out + n * a->os_n + r * a->os_h;
        if (j->stream_out && a->os_w == COP && ((uintptr_t)out_row % (LANES * sizeof(float))) == 0) {
            for (int64_t i = 0; i < total; i += LANES) vf_stream(out_row + i, vf_load(vals + i));
        } else if (a->os_w == COP) {
            memcpy(out_row, vals, (size_t)total * sizeof(float));
        } else {
            for (int64_t w = 0; w < PW; w++) {
                const float *v = vals + w * COP;
                float *op = out_row + w * a->os_w;
                for (int64_t c0 = 0; c0 < CF; c0 += LANES) vf_store(op + c0, vf_load(v + c0));
                if (CF < C) vf_store_part(op + CF, vf_load(v + CF), C - CF);
            }
        }
    }
    /* 6. the packed signs: bit c of word c/32 set where !(v >= 0); padding bits 0 */
    if (a->out_packed) {
        uint32_t *packed_row = a->out_packed + (n * PH + r) * PW * XWO;
        const int64_t whole = C / 32;
        for (int64_t w = 0; w < PW; w++) {
            const float *v = vals + w * COP;
            uint32_t *words = packed_row + w * XWO;
            for (int64_t wd = 0; wd < whole; wd++) {
                uint32_t bits = 0;
                for (int k = 0; k < 32 / LANES; k++) bits |= vf_negbits(vf_load(v + 32 * wd + k * LANES)) << (k * LANES);
                words[wd] = bits;
            }
            if (whole < XWO) {
                uint32_t bits = 0;
                for (int64_t c0 = 32 * whole; c0 < C; c0 += LANES)
                    bits |= vf_negbits(vf_load(v + c0)) << (c0 % 32);
                words[whole] = bits & (uint32_t)((1ull << (C % 32)) - 1);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Setup: the digit words over the halo, the iteration offsets, the border tables.
 * ------------------------------------------------------------------------------------------- */
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

/* The padding correction tables of correct_border, from the weight sums. Returns 0 when out of memory. */
static int border_tables(conv_job *j, border_classes *b) {
    const cbcn_conv_params *a = &j->p;
    const int64_t KH = a->KH, KW = a->KW, COP = j->COP, COB = COP / LANES;
    int64_t *rr = (int64_t *)malloc((size_t)(2 * (a->OH + 1)) * sizeof(int64_t));
    int64_t *cr = (int64_t *)malloc((size_t)(2 * (a->OW + 1)) * sizeof(int64_t));
    b->row_class = (int32_t *)malloc((size_t)(a->OH + 1) * sizeof(int32_t));
    b->col_class = (int32_t *)malloc((size_t)(a->OW + 1) * sizeof(int32_t));
    if (!rr || !cr || !b->row_class || !b->col_class) { free(rr); free(cr); return 0; }
    const int64_t nr = classify(a->OH, a->stride, a->pad, KH, a->H, b->row_class, rr);
    const int64_t nc = classify(a->OW, a->stride, a->pad, KW, a->W, b->col_class, cr);
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
                            corr[cob * LANES + l] += j->wsum[((cob * KH + kh) * KW + kw) * LANES + l];
                }
        }
    free(rr);
    free(cr);
    j->row_class = b->row_class;
    j->col_class = b->col_class;
    j->corr = b->corr;
    j->n_col_classes = nc;
    return 1;
}

/* The haloed geometry and the offset of each of the T words of a window. */
static int setup_windows(conv_job *j) {
    const cbcn_conv_params *a = &j->p;
    const int64_t XW = a->XW, words = j->pairs ? 1 : XW;
    j->HP = a->H + 2 * a->pad;
    j->WP = a->W + 2 * a->pad;
    j->XD = j->pairs ? DIGITS : XW * DIGITS;
    int32_t *xoff = (int32_t *)scratch(SCRATCH_XOFF, (size_t)(j->T) * sizeof(int32_t));
    if (!xoff) return 0;
    for (int64_t kh = 0; kh < a->KH; kh++)
        for (int64_t kw = 0; kw < a->KW; kw++)
            for (int64_t x = 0; x < words; x++)
                xoff[(kh * a->KW + kw) * words + x] = (int32_t)((kh * j->WP + kw) * j->XD + x * DIGITS);
    j->xoff = xoff;
    return 1;
}

/* Image n of the input as digit words over a zero halo (pad pixels on every side) into dst
 * (HP, WP, XD). Pixel pairs: the haloed word at column c holds the signs of columns c and
 * c + stride (the next output pixel's tap), low and high half-word. */
static void image_digits(const conv_job *j, int64_t n, uint32_t *dst) {
    const cbcn_conv_params *a = &j->p;
    const int64_t pad = a->pad, XW = a->XW, WP = j->WP, XD = j->XD, s = a->stride, row_words = WP * XD;
    memset(dst, 0, (size_t)(pad * row_words) * sizeof(uint32_t)); /* the top and bottom halo rows */
    memset(dst + (pad + a->H) * row_words, 0, (size_t)(pad * row_words) * sizeof(uint32_t));
    for (int64_t h = 0; h < a->H; h++) {
        const uint32_t *src = a->x + (n * a->H + h) * a->W * XW;
        uint32_t *row = dst + (h + pad) * row_words;
        memset(row, 0, (size_t)(pad * XD) * sizeof(uint32_t)); /* the left and right halo columns */
        memset(row + (pad + a->W) * XD, 0, (size_t)(pad * XD) * sizeof(uint32_t));
        if (j->pairs) {
            /* haloed column c holds input columns c − pad and c − pad + s (each 0 outside the image) */
            for (int64_t c = pad - s > 0 ? pad - s : 0; c < pad + a->W; c++) {
                const int64_t w0 = c - pad, w1 = c - pad + s;
                const uint32_t lo = w0 >= 0 ? src[w0] & 0xFFFFu : 0, hi = w1 < a->W ? src[w1] & 0xFFFFu : 0;
                split_digits(lo | hi << 16, row + c * XD);
            }
        } else {
            uint32_t *d = row + pad * XD;
            for (int64_t i = 0; i < a->W * XW; i++) split_digits(src[i], d + i * DIGITS);
        }
    }
}

/* The per-channel vectors, zero-padded to COP so that whole vectors can be loaded. */
static int setup_vectors(conv_job *j) {
    const cbcn_conv_params *a = &j->p;
    const float *src[4] = {a->scale, a->bias, a->bn_mul, a->bn_add};
    float *buf = (float *)scratch(SCRATCH_VECTORS, (size_t)(4 * j->COP) * sizeof(float));
    if (!buf) return 0;
    const float *padded[4];
    for (int i = 0; i < 4; i++) {
        padded[i] = NULL;
        if (!src[i]) continue;
        float *v = buf + i * j->COP;
        memset(v, 0, (size_t)j->COP * sizeof(float));
        memcpy(v, src[i], (size_t)a->C_out * sizeof(float));
        padded[i] = v;
    }
    j->scale = padded[0];
    j->bias = padded[1];
    j->bn_mul = padded[2];
    j->bn_add = padded[3];
    return 1;
}

/* Copies plane-major (N, C, H, W)-strided image n into a pixel-major (H·W, COP) buffer, or back:
 * contiguous planes LANES pixels x LANES channels per in-register transpose, in channel blocks
 * (LANES sequential streams through LANES planes, which the prefetchers follow), the rest
 * element by element. */
static void stage_image(float *staged, const float *t, int64_t n, int64_t C, int64_t H, int64_t W, int64_t COP,
                        int64_t sn, int64_t sc, int64_t sh, int64_t sw, int to_staged) {
    const int64_t P = H * W;
    int64_t p0 = 0;
    if (LANES > 1 && sw == 1 && sh == W) {
        VF r[LANES];
        const int64_t PB = P - P % LANES;
        for (int64_t c0 = 0; c0 < C; c0 += LANES)
            for (p0 = 0; p0 < PB; p0 += LANES) {
                const int64_t nc = min64(LANES, C - c0);
                const float *plane = t + n * sn + c0 * sc + p0;
                if (to_staged) {
                    for (int i = 0; i < LANES; i++) r[i] = i < nc ? vf_load(plane + i * sc) : vf_zero();
                    vf_transpose(r);
                    for (int k = 0; k < LANES; k++) vf_store(staged + (p0 + k) * COP + c0, r[k]);
                } else {
                    for (int k = 0; k < LANES; k++) r[k] = vf_load(staged + (p0 + k) * COP + c0);
                    vf_transpose(r);
                    for (int i = 0; i < nc; i++) vf_store((float *)plane + i * sc, r[i]);
                }
            }
        p0 = PB;
    }
    for (int64_t c = 0; c < C; c++) {
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
int cbcn_binary_conv(const cbcn_conv_params *params) {
    const cbcn_conv_params *a = params;
    if (!a || a->C_out < 1 || a->OH < 0 || a->OW < 0) return -1;
    if (!a->src && (!a->x || !a->w || a->XW != (a->C_in + 31) / 32 || a->C_in < 1 || a->stride < 1 || a->pad < 0))
        return -1;
    if (a->pool != 0 && a->pool != 2 && a->pool != 3) return -1;
    if (a->bn_mul && !a->bn_add) return -1;
    conv_job job;
    memset(&job, 0, sizeof job);
    job.p = *a;
    job.COP = round_up(a->C_out, LANES);
    const int64_t COP = job.COP, rows = pooled_size(a->OH, a->pool);
    const int64_t PH = rows, PW = pooled_size(a->OW, a->pool);
    border_classes classes = {NULL, NULL, NULL};
    if (!setup_vectors(&job)) return -2;
    if (!a->src) {
        job.pairs = pair_mode(a->C_in);
        job.T = a->KH * a->KW * (job.pairs ? 1 : a->XW);
        job.wd = a->w;
        job.wsum = (const int32_t *)(a->w + (COP / LANES) * job.T * DIGITS * LANES);
        if (!setup_windows(&job)) return -2;
        if (a->pad > 0 && !border_tables(&job, &classes)) return -2;
    }
#ifdef _OPENMP
    const int threads = a->threads > 1 ? (int)a->threads : 1;
#else
    const int threads = 1;
#endif
    const int stage_src = a->src && a->ss_c != 1, stage_res = a->residual && a->rs_c != 1;
    const int stage_out = a->out && a->os_c != 1;
    /* By image where there are images enough for the threads (each image's digits then built
     * just before its rows read them, while they fit the caches) or an NCHW tensor to stage;
     * else by output row, over the digits of the whole batch built once. */
    const int by_image = stage_src || stage_res || stage_out || a->N >= threads;
    const int64_t image_words = job.HP * job.WP * job.XD;
    if (!a->src && !by_image) {
        uint32_t *xd = (uint32_t *)scratch(SCRATCH_DIGITS, (size_t)(a->N * image_words) * sizeof(uint32_t));
        if (!xd) { free_border_tables(&classes); return -2; }
        for (int64_t n = 0; n < a->N; n++) image_digits(&job, n, xd + n * image_words);
        job.xd = xd;
        job.xd_n = image_words;
    }
    /* An output larger than STREAM_BYTES leaves the caches before the next layer reads it: written
     * with non-temporal stores, it skips the read-for-ownership of every line (a third of its
     * memory traffic). Not into a staging buffer, which is read back at once. */
    job.stream_out = a->out && !stage_out && (int64_t)(a->N * PH * PW * COP * sizeof(float)) > STREAM_BYTES;
    const conv_job *j = &job;
    const int64_t work = by_image ? a->N : a->N * rows;
    const size_t sums_bytes = (size_t)(2 * a->OW + 1) * COP * sizeof(int32_t); /* two rows and a pair's spare pixel */
    const size_t src_bytes = stage_src ? (size_t)a->OH * a->OW * COP * sizeof(float) : 1;
    const size_t img_bytes = (stage_res || stage_out) ? (size_t)PH * PW * COP * sizeof(float) : 1;
    const size_t digits_bytes = (!a->src && by_image) ? (size_t)image_words * sizeof(uint32_t) : 1;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(| : failed)
#endif
    {
        int32_t *sums = (int32_t *)scratch(SCRATCH_SUMS, sums_bytes);
        float *vals = (float *)scratch(SCRATCH_VALS, (size_t)(PW * COP) * sizeof(float) + 1);
        float *src_img = (float *)scratch(SCRATCH_SRC, src_bytes), *res_img = (float *)scratch(SCRATCH_RES, img_bytes);
        float *out_img = (float *)scratch(SCRATCH_OUT, img_bytes);
        uint32_t *digits = by_image ? (uint32_t *)scratch(SCRATCH_DIGITS, digits_bytes) : NULL;
        if (!sums || !vals || !src_img || !res_img || !out_img || (by_image && !digits)) {
            failed = 1;
        } else {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t i = 0; i < work; i++) {
                if (!by_image) {
                    output_row(j, i / rows, i % rows, sums, vals);
                    continue;
                }
                conv_job b = *j; /* image i, with its digits and its staged buffers in place of NCHW tensors */
                if (!a->src) {
                    image_digits(j, i, digits);
                    b.xd = digits;
                    b.xd_n = 0;
                }
                if (stage_src) {
                    stage_image(src_img, a->src, i, a->C_out, a->OH, a->OW, COP, a->ss_n, a->ss_c, a->ss_h, a->ss_w, 1);
                    b.p.src = src_img - i * a->OH * a->OW * COP;
                    b.p.ss_n = a->OH * a->OW * COP; b.p.ss_c = 1; b.p.ss_h = a->OW * COP; b.p.ss_w = COP;
                }
                if (stage_res) {
                    stage_image(res_img, a->residual, i, a->C_out, PH, PW, COP, a->rs_n, a->rs_c, a->rs_h, a->rs_w, 1);
                    b.p.residual = res_img - i * PH * PW * COP;
                    b.p.rs_n = PH * PW * COP; b.p.rs_c = 1; b.p.rs_h = PW * COP; b.p.rs_w = COP;
                }
                if (stage_out) {
                    b.p.out = out_img - i * PH * PW * COP;
                    b.p.os_n = PH * PW * COP; b.p.os_c = 1; b.p.os_h = PW * COP; b.p.os_w = COP;
                }
                for (int64_t r = 0; r < rows; r++) output_row(&b, i, r, sums, vals);
                if (stage_out) stage_image(out_img, a->out, i, a->C_out, PH, PW, COP, a->os_n, a->os_c, a->os_h, a->os_w, 0);
            }
        }
    }
    if (j->stream_out) vf_stream_fence();
    free_border_tables(&classes);
    return failed ? -2 : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Sign packing of float tensors, and the arithmetic peak.
 * ------------------------------------------------------------------------------------------- */
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
        } else if (sw == 1) { /* NCHW rows: LANES pixels x 32 channels per step, vectorised over pixels */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t i = 0; i < N * H; i++) {
                const int64_t n = i / H, h = i % H;
                uint32_t *o = out + (n * H + h) * W * XW;
                for (int64_t wd = 0; wd < XW; wd++) {
                    const int64_t c0 = wd * 32, c1 = min64(C, c0 + 32);
                    int64_t w = 0;
                    for (; LANES > 1 && w + LANES <= W; w += LANES) {
                        VI acc = vi_zero();
                        for (int64_t c = c0; c < c1; c++)
                            acc = vi_or(acc, vf_negselect(vf_load(x + n * sn + c * sc + h * sh + w), vi_set1(1u << (c - c0))));
                        if (XW == 1) {
                            vi_store(o + w, acc);
                        } else {
                            uint32_t lanes[LANES];
                            vi_store(lanes, acc);
                            for (int l = 0; l < LANES; l++) o[(w + l) * XW + wd] = lanes[l];
                        }
                    }
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

/* This variant's peak for the kernel's arithmetic: `iters` steps of conv_block's inner loop on
 * PIX_BLOCK accumulators (per digit: a weight-vector load, and per pixel a broadcast load, XOR,
 * count, add; the counts widened as the kernel widens them), from a tiny L1-resident buffer.
 * Returns the binary multiply-accumulates done (bits compared), for the caller to divide by the
 * time taken. */
int64_t cbcn_popcount_peak(int64_t iters) {
    COUNT_SETUP;
    uint32_t buf[8 * PIX_BLOCK * DIGITS], wbuf[DIGITS * LANES];
    for (int i = 0; i < 8 * PIX_BLOCK * DIGITS; i++) buf[i] = ((uint32_t)i * 0x9e3779b9u) & (DIGITS == 2 ? 0x0F0F0F0Fu : ~0u);
    for (int i = 0; i < DIGITS * LANES; i++) wbuf[i] = ((uint32_t)i * 0x5a5a5a5bu) & (DIGITS == 2 ? 0x0F0F0F0Fu : ~0u);
    VI total = vi_zero();
    for (int64_t it0 = 0; it0 < iters; it0 += CNT_LIMIT) {
        const int64_t it1 = min64(iters, it0 + CNT_LIMIT);
        VI cnt[PIX_BLOCK];
        for (int p = 0; p < PIX_BLOCK; p++) cnt[p] = vi_zero();
        for (int64_t it = it0; it < it1; it++) {
            const uint32_t *xp = buf + (it & 7) * PIX_BLOCK * DIGITS;
            const VI w0 = vi_load(wbuf);
#if DIGITS == 2
            const VI w1 = vi_load(wbuf + LANES);
            for (int p = 0; p < PIX_BLOCK; p++)
                cnt[p] = CNT_ADD(cnt[p], CNT_ADD(CNT(vi_xor(vi_bcast(xp + p * DIGITS), w0)), CNT(vi_xor(vi_bcast(xp + p * DIGITS + 1), w1))));
#else
            for (int p = 0; p < PIX_BLOCK; p++) cnt[p] = CNT_ADD(cnt[p], CNT(vi_xor(vi_bcast(xp + p), w0)));
#endif
        }
        for (int p = 0; p < PIX_BLOCK; p++) total = vi_add32(total, WIDEN32(cnt[p]));
    }
    uint32_t sink[LANES];
    vi_store(sink, total);
    volatile uint32_t keep = sink[0];
    (void)keep;
    return iters * PIX_BLOCK * LANES * 32;
}
