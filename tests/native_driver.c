/* A stand-alone driver for the CPU engine's kernels, for a variant this machine cannot load:
 * cross-compiled with bconv.c included (aarch64-linux-gnu-gcc -static ... -DCBCN_VARIANT_NEON)
 * and run under qemu-user by tests/native_remote.py, which writes one call to a file and reads
 * the outputs back.
 *
 * Input file: int64 op, then
 *   op 1 (cbcn_binary_conv): the cbcn_conv_params struct with every pointer field holding
 *        1 + its byte offset in the blob (0: NULL), and `w` pointing at the plain packed bank
 *        (C_out, KH, KW, XW), which this driver prepares for its variant;
 *   op 2 (cbcn_pack_signs_f32): int64 N, C, H, W, sn, sc, sh, sw, 1 + x offset, 1 + out offset;
 * then int64 blob length and the blob. Output file: the blob after the call. Exit status: the
 * kernel's return code (0), or 3 for a malformed file.
 */
#include <stdio.h>

#include "bconv.c"

static int read_all(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

static void *at(char *blob, uint64_t ref) { return ref ? (void *)(blob + ref - 1) : NULL; }

int main(int argc, char **argv) {
    if (argc != 3) return 3;
    FILE *in = fopen(argv[1], "rb");
    if (!in) return 3;
    int64_t op, args[10], blob_len;
    cbcn_conv_params p;
    if (!read_all(in, &op, sizeof op)) return 3;
    if (op == 1 && !read_all(in, &p, sizeof p)) return 3;
    if (op == 2 && !read_all(in, args, sizeof args)) return 3;
    if ((op != 1 && op != 2) || !read_all(in, &blob_len, sizeof blob_len) || blob_len < 0) return 3;
    char *blob = malloc((size_t)blob_len + 1);
    if (!blob || !read_all(in, blob, (size_t)blob_len)) return 3;
    fclose(in);
    int rc;
    if (op == 1) {
#define CBCN_FIX(field, type) p.field = (type)at(blob, (uint64_t)(uintptr_t)p.field)
        CBCN_FIX(x, const uint32_t *); CBCN_FIX(w, const uint32_t *); CBCN_FIX(scale, const float *);
        CBCN_FIX(bias, const float *); CBCN_FIX(bn_mul, const float *); CBCN_FIX(bn_add, const float *);
        CBCN_FIX(residual, const float *); CBCN_FIX(out, float *); CBCN_FIX(out_packed, uint32_t *);
        CBCN_FIX(src, const float *);
#undef CBCN_FIX
        if (p.w) {
            uint32_t *bank = malloc((size_t)cbcn_prepared_words(p.C_out, p.C_in, p.KH, p.KW) * sizeof(uint32_t));
            if (!bank || cbcn_prepare_weights(p.w, p.C_out, p.C_in, p.KH, p.KW, bank) != 0) return 3;
            p.w = bank;
        }
        rc = cbcn_binary_conv(&p);
    } else {
        rc = cbcn_pack_signs_f32(at(blob, (uint64_t)args[8]), args[0], args[1], args[2], args[3], args[4], args[5],
                                 args[6], args[7], at(blob, (uint64_t)args[9]), 1);
    }
    FILE *out = fopen(argv[2], "wb");
    if (!out || fwrite(blob, 1, (size_t)blob_len, out) != (size_t)blob_len) return 3;
    fclose(out);
    return rc == 0 ? 0 : 4;
}
