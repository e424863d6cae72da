/* The CPU engine's ISA layer: the few vector operations bconv.c's kernels are written in, once
 * per instruction set. Exactly one CBCN_VARIANT_* macro is defined by the build (native.py
 * passes -DCBCN_VARIANT_<NAME> with the matching -m flags); a variant whose instructions the
 * compiler was not told to use is a compile error, never a silent scalar build.
 *
 *   variant          LANES  DIGITS  bit count of a digit vector               pixel pairs
 *   avx512-bitalg     16      1     vpopcntd per 32-bit lane                   vpopcntw (16-bit lanes)
 *   avx512-vpopcnt    16      1     vpopcntd per 32-bit lane                   no
 *   avx512bw          16      2     vpshufb nibble table per byte              yes (byte counts)
 *   avx2               8      2     vpshufb nibble table per byte              yes (byte counts)
 *   neon               4      1     cnt per byte (vcntq_u8)                    yes (byte counts)
 *   scalar / portable  1      1     popcount of one word                       no
 *
 * LANES: output channels per weight vector (32-bit lanes); PIX_BLOCK (bconv.c, default 8): output
 * pixels whose counters the inner loop keeps in registers. DIGITS: a packed word is stored as
 * DIGITS digit words — its low and high nibbles (w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F) for the
 * nibble-table variants, so that a digit of x XOR a digit of w is already a table index and the
 * count is one vpshufb (no shift or mask in the inner loop). popcount(x ^ w) is the sum of the
 * counts of its digits.
 *
 * Counts accumulate at their own width (CNT: bytes, 16- or 32-bit lanes) for at most
 * CNT_LIMIT words (a byte holds 8 per word: 31 words fit in 255), then WIDEN32 sums them into
 * 32-bit lanes. Pixel pairs (layers of <= 16 input channels: two pixels' half-words in one
 * 32-bit word) need counts that do not cross 16-bit halves: CNT16 / WIDEN16 (CAN_PAIR).
 *
 * vf_stream stores with a non-temporal hint (aligned to the vector), for outputs too large to stay
 * cached; vf_stream_fence orders them before the call returns.
 *
 * Floats: LANES-wide vectors with IEEE single rounding per operation, FMA only where asked
 * (vf_fma: one rounding, as fmaf). vf_max(t, v) is (t > v ? t : v) and vf_relu(v) is
 * (v < 0 ? 0 : v), NaN and signed zeros included, as the scalar code has them.
 *
 * CBCN_SIMDE (tests only): the x86 variants' intrinsics come from SIMDe's portable emulation
 * (Debian libsimde-dev) instead of the CPU, so their code is exercised on a machine without
 * those instructions.
 */
#ifndef CBCN_SIMD_H
#define CBCN_SIMD_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(CBCN_VARIANT_AVX512_BITALG) || defined(CBCN_VARIANT_AVX512_VPOPCNT) || defined(CBCN_VARIANT_AVX512BW)
#define CBCN_AVX512 1
#endif

#if defined(CBCN_AVX512) || defined(CBCN_VARIANT_AVX2)
#if defined(CBCN_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#undef _mm512_madd_epi16 /* SIMDe 0.7.4 (Debian 12): one wrong alias, two missing */
#define _mm512_madd_epi16 simde_mm512_madd_epi16
#undef _mm512_shuffle_f32x4
#define _mm512_shuffle_f32x4 simde_mm512_shuffle_f32x4
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps cbcn_simde_cvtepi32_ps
static inline simde__m512 cbcn_simde_cvtepi32_ps(simde__m512i v) {
    int32_t i[16];
    float f[16];
    simde_mm512_storeu_si512(i, v);
    for (int k = 0; k < 16; k++) f[k] = (float)i[k];
    return simde_mm512_loadu_ps(f);
}
#else
#include <immintrin.h>
#endif
#endif

/* ------------------------------------------------------------------------------------------ */
#if defined(CBCN_AVX512)
#if !defined(CBCN_SIMDE) && !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__FMA__))
#error "the avx512 variants need -mavx512f -mavx512bw -mfma"
#endif
#define LANES 16
typedef __m512i VI;
typedef __m512 VF;
#define vi_zero() _mm512_setzero_si512()
#define vi_load(p) _mm512_loadu_si512((const void *)(p))
#define vi_store(p, v) _mm512_storeu_si512((void *)(p), (v))
#define vi_bcast(p) _mm512_set1_epi32(*(const int32_t *)(p))
#define vi_set1(x) _mm512_set1_epi32((int32_t)(x))
#define vi_xor(a, b) _mm512_xor_si512((a), (b))
#define vi_and(a, b) _mm512_and_si512((a), (b))
#define vi_or(a, b) _mm512_or_si512((a), (b))
#define vi_add32(a, b) _mm512_add_epi32((a), (b))
#define vi_sub32(a, b) _mm512_sub_epi32((a), (b))
#define vi_slli32(a, n) _mm512_slli_epi32((a), (n))
#define vi_srli32(a, n) _mm512_srli_epi32((a), (n))
#define vf_zero() _mm512_setzero_ps()
#define vf_load(p) _mm512_loadu_ps(p)
#define vf_store(p, v) _mm512_storeu_ps((p), (v))
#if defined(CBCN_SIMDE)
#define vf_stream(p, v) _mm512_storeu_ps((p), (v)) /* SIMDe 0.7.4 has no 512-bit stream store */
#else
#define vf_stream(p, v) _mm512_stream_ps((p), (v)) /* 64-byte aligned p */
#endif
#define vf_stream_fence() _mm_sfence()
#define vf_set1(x) _mm512_set1_ps(x)
#define vf_from_int(v) _mm512_cvtepi32_ps(v)
#define vf_from_bits(v) _mm512_castsi512_ps(v)
#define vf_add(a, b) _mm512_add_ps((a), (b))
#define vf_mul(a, b) _mm512_mul_ps((a), (b))
#define vf_div(a, b) _mm512_div_ps((a), (b))
#define vf_fma(v, m, a) _mm512_fmadd_ps((v), (m), (a))
#define vf_max(t, v) _mm512_max_ps((t), (v)) /* MAXPS: t > v ? t : v (the second operand on NaN or ±0) */
#define vf_relu(v) _mm512_mask_mov_ps((v), _mm512_cmp_ps_mask((v), _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps())
#define vf_negbits(v) ((uint32_t)_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), _CMP_NGE_UQ))
#define vf_negselect(v, bits) _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), _CMP_NGE_UQ), (bits))

#if defined(CBCN_VARIANT_AVX512BW)
#define VARIANT_NAME "avx512bw"
#define DIGITS 2
#define CAN_PAIR 1
#define CNT_LIMIT 31
#define COUNT_SETUP const __m512i nibble_counts_ = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100)
#define CNT(v) _mm512_shuffle_epi8(nibble_counts_, (v))
#define CNT_ADD(a, c) _mm512_add_epi8((a), (c))
#define WIDEN32(a) _mm512_madd_epi16(_mm512_maddubs_epi16((a), _mm512_set1_epi8(1)), _mm512_set1_epi16(1))
#define CNT16(v) CNT(v)
#define CNT16_ADD(a, c) CNT_ADD((a), (c))
#define WIDEN16(a) _mm512_maddubs_epi16((a), _mm512_set1_epi8(1))
#define CNT16_LIMIT 31
#else
#if !defined(CBCN_SIMDE) && !defined(__AVX512VPOPCNTDQ__)
#error "the avx512-vpopcnt variants need -mavx512vpopcntdq"
#endif
#define DIGITS 1
#define CNT_LIMIT (1 << 26) /* 32-bit lanes: never full */
#define COUNT_SETUP (void)0
#define CNT(v) _mm512_popcnt_epi32(v)
#define CNT_ADD(a, c) _mm512_add_epi32((a), (c))
#define WIDEN32(a) (a)
#if defined(CBCN_VARIANT_AVX512_BITALG)
#if !defined(CBCN_SIMDE) && !defined(__AVX512BITALG__)
#error "the avx512-bitalg variant needs -mavx512bitalg"
#endif
#define VARIANT_NAME "avx512-bitalg"
#define CAN_PAIR 1
#define CNT16(v) _mm512_popcnt_epi16(v)
#define CNT16_ADD(a, c) _mm512_add_epi16((a), (c))
#define WIDEN16(a) (a)
#define CNT16_LIMIT 4095 /* 16 bits per word, 16-bit lanes */
#else
#define VARIANT_NAME "avx512-vpopcnt"
#define CAN_PAIR 0
#endif
#endif

/* In-register transpose of a 16x16 float tile (rows r[0..15] become its columns). */
static inline void vf_transpose(VF r[LANES]) {
    VF t[16];
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

/* ------------------------------------------------------------------------------------------ */
#elif defined(CBCN_VARIANT_AVX2)
#if !defined(CBCN_SIMDE) && !(defined(__AVX2__) && defined(__FMA__))
#error "the avx2 variant needs -mavx2 -mfma"
#endif
#define VARIANT_NAME "avx2"
#define LANES 8
#define DIGITS 2
#define CAN_PAIR 1
typedef __m256i VI;
typedef __m256 VF;
#define vi_zero() _mm256_setzero_si256()
#define vi_load(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define vi_store(p, v) _mm256_storeu_si256((__m256i *)(void *)(p), (v))
#define vi_bcast(p) _mm256_set1_epi32(*(const int32_t *)(p))
#define vi_set1(x) _mm256_set1_epi32((int32_t)(x))
#define vi_xor(a, b) _mm256_xor_si256((a), (b))
#define vi_and(a, b) _mm256_and_si256((a), (b))
#define vi_or(a, b) _mm256_or_si256((a), (b))
#define vi_add32(a, b) _mm256_add_epi32((a), (b))
#define vi_sub32(a, b) _mm256_sub_epi32((a), (b))
#define vi_slli32(a, n) _mm256_slli_epi32((a), (n))
#define vi_srli32(a, n) _mm256_srli_epi32((a), (n))
#define CNT_LIMIT 31
#define COUNT_SETUP const __m256i nibble_counts_ = _mm256_setr_epi8( \
    0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4)
#define CNT(v) _mm256_shuffle_epi8(nibble_counts_, (v))
#define CNT_ADD(a, c) _mm256_add_epi8((a), (c))
#define WIDEN32(a) _mm256_madd_epi16(_mm256_maddubs_epi16((a), _mm256_set1_epi8(1)), _mm256_set1_epi16(1))
#define CNT16(v) CNT(v)
#define CNT16_ADD(a, c) CNT_ADD((a), (c))
#define WIDEN16(a) _mm256_maddubs_epi16((a), _mm256_set1_epi8(1))
#define CNT16_LIMIT 31
#define vf_zero() _mm256_setzero_ps()
#define vf_load(p) _mm256_loadu_ps(p)
#define vf_store(p, v) _mm256_storeu_ps((p), (v))
#define vf_stream(p, v) _mm256_stream_ps((p), (v)) /* 32-byte aligned p */
#define vf_stream_fence() _mm_sfence()
#define vf_set1(x) _mm256_set1_ps(x)
#define vf_from_int(v) _mm256_cvtepi32_ps(v)
#define vf_from_bits(v) _mm256_castsi256_ps(v)
#define vf_add(a, b) _mm256_add_ps((a), (b))
#define vf_mul(a, b) _mm256_mul_ps((a), (b))
#define vf_div(a, b) _mm256_div_ps((a), (b))
#define vf_fma(v, m, a) _mm256_fmadd_ps((v), (m), (a))
#define vf_max(t, v) _mm256_max_ps((t), (v)) /* MAXPS: t > v ? t : v */
#define vf_relu(v) _mm256_blendv_ps((v), _mm256_setzero_ps(), _mm256_cmp_ps((v), _mm256_setzero_ps(), _CMP_LT_OQ))
#define vf_negbits(v) ((uint32_t)_mm256_movemask_ps(_mm256_cmp_ps((v), _mm256_setzero_ps(), _CMP_NGE_UQ)))
#define vf_negselect(v, bits) _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps((v), _mm256_setzero_ps(), _CMP_NGE_UQ)), (bits))

/* In-register transpose of an 8x8 float tile. */
static inline void vf_transpose(VF r[LANES]) {
    VF t[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        __m256d a0 = _mm256_castps_pd(t[4 * i]), a1 = _mm256_castps_pd(t[4 * i + 1]);
        __m256d a2 = _mm256_castps_pd(t[4 * i + 2]), a3 = _mm256_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(a0, a2));
        r[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a0, a2));
        r[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(a1, a3));
        r[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(a1, a3));
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
        t[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
    }
    for (int j = 0; j < 8; j++) r[j] = t[j];
}

/* ------------------------------------------------------------------------------------------ */
#elif defined(CBCN_VARIANT_NEON)
#if !defined(__aarch64__)
#error "the neon variant is for aarch64"
#endif
#include <arm_neon.h>
#define VARIANT_NAME "neon"
#define LANES 4
#define DIGITS 1
#define CAN_PAIR 1
typedef uint32x4_t VI;
typedef float32x4_t VF;
#define vi_zero() vdupq_n_u32(0)
#define vi_load(p) vld1q_u32((const uint32_t *)(p))
#define vi_store(p, v) vst1q_u32((uint32_t *)(p), (v))
#define vi_bcast(p) vld1q_dup_u32((const uint32_t *)(p))
#define vi_set1(x) vdupq_n_u32((uint32_t)(x))
#define vi_xor(a, b) veorq_u32((a), (b))
#define vi_and(a, b) vandq_u32((a), (b))
#define vi_or(a, b) vorrq_u32((a), (b))
#define vi_add32(a, b) vaddq_u32((a), (b))
#define vi_sub32(a, b) vsubq_u32((a), (b))
#define vi_slli32(a, n) vshlq_n_u32((a), (n))
#define vi_srli32(a, n) vshrq_n_u32((a), (n))
#define CNT_LIMIT 31
#define COUNT_SETUP (void)0
#define CNT(v) vreinterpretq_u32_u8(vcntq_u8(vreinterpretq_u8_u32(v)))
#define CNT_ADD(a, c) vreinterpretq_u32_u8(vaddq_u8(vreinterpretq_u8_u32(a), vreinterpretq_u8_u32(c)))
#define WIDEN32(a) vpaddlq_u16(vpaddlq_u8(vreinterpretq_u8_u32(a)))
#define CNT16(v) CNT(v)
#define CNT16_ADD(a, c) CNT_ADD((a), (c))
#define WIDEN16(a) vreinterpretq_u32_u16(vpaddlq_u8(vreinterpretq_u8_u32(a)))
#define CNT16_LIMIT 31
#define vf_zero() vdupq_n_f32(0.0f)
#define vf_load(p) vld1q_f32(p)
#define vf_store(p, v) vst1q_f32((p), (v))
#define vf_stream(p, v) vst1q_f32((p), (v)) /* no non-temporal hint used */
#define vf_stream_fence() ((void)0)
#define vf_set1(x) vdupq_n_f32(x)
#define vf_from_int(v) vcvtq_f32_s32(vreinterpretq_s32_u32(v))
#define vf_from_bits(v) vreinterpretq_f32_u32(v)
#define vf_add(a, b) vaddq_f32((a), (b))
#define vf_mul(a, b) vmulq_f32((a), (b))
#define vf_div(a, b) vdivq_f32((a), (b))
#define vf_fma(v, m, a) vfmaq_f32((a), (v), (m))
#define vf_max(t, v) vbslq_f32(vcgtq_f32((t), (v)), (t), (v))
#define vf_relu(v) vbslq_f32(vcltq_f32((v), vdupq_n_f32(0.0f)), vdupq_n_f32(0.0f), (v))
static inline uint32_t vf_negbits(VF v) {
    static const uint32_t weights[4] = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(vmvnq_u32(vcgeq_f32(v, vdupq_n_f32(0.0f))), vld1q_u32(weights)));
}
#define vf_negselect(v, bits) vandq_u32(vmvnq_u32(vcgeq_f32((v), vdupq_n_f32(0.0f))), (bits))

/* In-register transpose of a 4x4 float tile. */
static inline void vf_transpose(VF r[LANES]) {
    const float32x4x2_t a = vtrnq_f32(r[0], r[1]), b = vtrnq_f32(r[2], r[3]);
    r[0] = vcombine_f32(vget_low_f32(a.val[0]), vget_low_f32(b.val[0]));
    r[1] = vcombine_f32(vget_low_f32(a.val[1]), vget_low_f32(b.val[1]));
    r[2] = vcombine_f32(vget_high_f32(a.val[0]), vget_high_f32(b.val[0]));
    r[3] = vcombine_f32(vget_high_f32(a.val[1]), vget_high_f32(b.val[1]));
}

/* ------------------------------------------------------------------------------------------ */
#elif defined(CBCN_VARIANT_SCALAR) || defined(CBCN_VARIANT_PORTABLE)
#if defined(CBCN_VARIANT_SCALAR)
#define VARIANT_NAME "scalar"
#else
#define VARIANT_NAME "portable"
#endif
#define LANES 1
#define DIGITS 1
#define CAN_PAIR 0
typedef uint32_t VI;
typedef float VF;
#define vi_zero() 0u
#define vi_load(p) (*(const uint32_t *)(p))
#define vi_store(p, v) (*(uint32_t *)(p) = (v))
#define vi_bcast(p) (*(const uint32_t *)(p))
#define vi_set1(x) ((uint32_t)(x))
#define vi_xor(a, b) ((a) ^ (b))
#define vi_and(a, b) ((a) & (b))
#define vi_or(a, b) ((a) | (b))
#define vi_add32(a, b) ((a) + (b))
#define vi_sub32(a, b) ((a) - (b))
#define vi_slli32(a, n) ((a) << (n))
#define vi_srli32(a, n) ((a) >> (n))
#define CNT_LIMIT (1 << 26)
#define COUNT_SETUP (void)0
#define CNT(v) ((uint32_t)__builtin_popcount(v))
#define CNT_ADD(a, c) ((a) + (c))
#define WIDEN32(a) (a)
#define vf_zero() 0.0f
#define vf_load(p) (*(p))
#define vf_store(p, v) (*(p) = (v))
#define vf_stream(p, v) (*(p) = (v))
#define vf_stream_fence() ((void)0)
#define vf_set1(x) (x)
static inline float vf_from_int(uint32_t v) { return (float)(int32_t)v; }
static inline float vf_from_bits(uint32_t v) { float f; memcpy(&f, &v, sizeof f); return f; }
#define vf_add(a, b) ((a) + (b))
#define vf_mul(a, b) ((a) * (b))
#define vf_div(a, b) ((a) / (b))
#define vf_fma(v, m, a) fmaf((v), (m), (a))
#define vf_max(t, v) ((t) > (v) ? (t) : (v))
#define vf_relu(v) ((v) < 0.0f ? 0.0f : (v))
#define vf_negbits(v) ((uint32_t)!((v) >= 0.0f))
#define vf_negselect(v, bits) (!((v) >= 0.0f) ? (bits) : 0u)
static inline void vf_transpose(VF r[LANES]) { (void)r; }

#else
#error "define one CBCN_VARIANT_* (native.py does)"
#endif

#ifndef VARIANT_NAME
#error "unknown variant"
#endif

/* A word's digits (see DIGITS above): what the inner loop XORs and counts. */
static inline void split_digits(uint32_t w, uint32_t *d) {
#if DIGITS == 2
    d[0] = w & 0x0F0F0F0Fu;
    d[1] = (w >> 4) & 0x0F0F0F0Fu;
#else
    d[0] = w;
#endif
}

/* Loads / stores of the first n < LANES floats of a vector (channel tails), through a buffer. */
static inline VF vf_load_part(const float *p, int64_t n) {
    float buf[LANES] = {0};
    memcpy(buf, p, (size_t)n * sizeof(float));
    return vf_load(buf);
}

static inline void vf_store_part(float *p, VF v, int64_t n) {
    float buf[LANES];
    vf_store(buf, v);
    memcpy(p, buf, (size_t)n * sizeof(float));
}

#endif /* CBCN_SIMD_H */
