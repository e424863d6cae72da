/* The C interface of the CPU engine's kernels (bconv.c, one build per instruction-set variant).
 *
 * Called by the PyTorch operators of ops.cpp, which load each variant's build with dlopen, and by
 * the cross-architecture test driver (tests/native_driver.c). Every function returns 0 or a
 * negative code (-1 bad arguments, -2 out of memory) unless it says otherwise.
 */
#ifndef CBCN_BCONV_H
#define CBCN_BCONV_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CBCN_ABI_VERSION 9

/* The one parameter struct of a fused binary conv (filled by ops.cpp). */
typedef struct {
    const uint32_t *x;      /* packed input (N, H, W, XW) */
    int64_t N, H, W, XW, C_in;
    const uint32_t *w;      /* the bank as cbcn_prepare_weights wrote it */
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
} cbcn_conv_params;

int cbcn_abi_version(void);
const char *cbcn_variant(void);
int cbcn_lanes(void);
/* Words (uint32) cbcn_prepare_weights writes for a layer of this shape. */
int64_t cbcn_prepared_words(int64_t C_out, int64_t C_in, int64_t KH, int64_t KW);
/* The bank (C_out, KH, KW, ceil(C_in/32)), packed as the contract says -> this variant's layout. */
int cbcn_prepare_weights(const uint32_t *w, int64_t C_out, int64_t C_in, int64_t KH, int64_t KW, uint32_t *out);
/* The fused binary convolution (or the epilogue of a float source: x, w NULL, src set). */
int cbcn_binary_conv(const cbcn_conv_params *params);
/* The signs of a float tensor (N, C, H, W), any strides -> (N, H, W, ceil(C/32)). */
int cbcn_pack_signs_f32(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sn, int64_t sc,
                        int64_t sh, int64_t sw, uint32_t *out, int64_t threads);
/* Binary multiply-accumulates of `iters` steps of the inner loop, for a peak measurement. */
int64_t cbcn_popcount_peak(int64_t iters);

#ifdef __cplusplus
}
#endif

#endif
