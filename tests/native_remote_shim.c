/* An engine for the cbcn operators that runs another architecture's kernels under qemu-user.
 *
 * Built for this machine with the C interface of bconv.h, and loaded into the operators like any
 * engine build (tests/_native_remote.py), so a cross-compiled variant goes through the same
 * operators and the same random sweeps as the kernels this machine runs. Each call writes the
 * parameter struct (pointers as blob offsets) and every buffer it points at to a file, runs
 * `$CBCN_REMOTE_EMULATOR $CBCN_REMOTE_DRIVER in out` (tests/native_driver.c, which prepares the
 * weights in its own variant's layout), and copies the outputs back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bconv.h"

int cbcn_abi_version(void) { return CBCN_ABI_VERSION; }
const char *cbcn_variant(void) { return "remote"; }
int cbcn_lanes(void) { return 1; }
int64_t cbcn_popcount_peak(int64_t iters) { (void)iters; return 0; }

/* The plain bank travels; the driver prepares it for its variant. */
int64_t cbcn_prepared_words(int64_t C_out, int64_t C_in, int64_t KH, int64_t KW) {
    return C_out * KH * KW * ((C_in + 31) / 32);
}

int cbcn_prepare_weights(const uint32_t *w, int64_t C_out, int64_t C_in, int64_t KH, int64_t KW, uint32_t *out) {
    memcpy(out, w, (size_t)cbcn_prepared_words(C_out, C_in, KH, KW) * sizeof(uint32_t));
    return 0;
}

enum { MAX_REGIONS = 10 };
typedef struct { const void *ptr; int64_t bytes, offset; int output; } region;
typedef struct { region r[MAX_REGIONS]; int n; int64_t size; } blob_plan;

/* Adds a buffer to the blob (64-byte aligned); returns 1 + its offset, 0 for NULL. */
static uint64_t add(blob_plan *b, const void *ptr, int64_t bytes, int output) {
    if (!ptr) return 0;
    region *r = &b->r[b->n++];
    r->ptr = ptr, r->bytes = bytes, r->offset = b->size, r->output = output;
    b->size += (bytes + 63) / 64 * 64;
    return (uint64_t)r->offset + 1;
}

/* Elements spanned by a strided (N, C, H, W) view with non-negative strides. */
static int64_t extent(int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn, int64_t sc, int64_t sh, int64_t sw) {
    if (!n || !c || !h || !w) return 0;
    return 1 + (n - 1) * sn + (c - 1) * sc + (h - 1) * sh + (w - 1) * sw;
}

static int run_driver(const void *header, size_t header_bytes, blob_plan *b) {
    const char *emulator = getenv("CBCN_REMOTE_EMULATOR"), *driver = getenv("CBCN_REMOTE_DRIVER");
    if (!emulator || !driver) return -1;
    char dir[] = "/tmp/cbcn-remote-XXXXXX", in_path[64], out_path[64], cmd[4096];
    if (!mkdtemp(dir)) return -2;
    snprintf(in_path, sizeof in_path, "%s/in", dir);
    snprintf(out_path, sizeof out_path, "%s/out", dir);
    char *blob = calloc((size_t)b->size + 1, 1);
    if (!blob) return -2;
    for (int i = 0; i < b->n; i++) memcpy(blob + b->r[i].offset, b->r[i].ptr, (size_t)b->r[i].bytes);
    FILE *f = fopen(in_path, "wb");
    int rc = -1;
    if (f) {
        fwrite(header, 1, header_bytes, f);
        fwrite(&b->size, sizeof b->size, 1, f);
        fwrite(blob, 1, (size_t)b->size, f);
        fclose(f);
        snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' '%s'", emulator, driver, in_path, out_path);
        if (system(cmd) == 0 && (f = fopen(out_path, "rb"))) {
            if (fread(blob, 1, (size_t)b->size, f) == (size_t)b->size) {
                for (int i = 0; i < b->n; i++)
                    if (b->r[i].output) memcpy((void *)b->r[i].ptr, blob + b->r[i].offset, (size_t)b->r[i].bytes);
                rc = 0;
            }
            fclose(f);
        }
    }
    remove(in_path);
    remove(out_path);
    rmdir(dir);
    free(blob);
    return rc;
}

static int64_t pooled(int64_t n, int64_t pool) { return pool == 2 ? n / 2 : pool == 3 ? (n + 1) / 2 : n; }

int cbcn_binary_conv(const cbcn_conv_params *p) {
    const int64_t C = p->C_out, PH = pooled(p->OH, p->pool), PW = pooled(p->OW, p->pool);
    blob_plan b = {0};
    struct { int64_t op; cbcn_conv_params q; } h = {1, *p};
#define REF(field, type, bytes, output) h.q.field = (type)(uintptr_t)add(&b, p->field, bytes, output)
    REF(x, const uint32_t *, 4 * p->N * p->H * p->W * p->XW, 0);
    REF(w, const uint32_t *, p->w ? 4 * cbcn_prepared_words(C, p->C_in, p->KH, p->KW) : 0, 0);
    REF(scale, const float *, 4 * C, 0);
    REF(bias, const float *, 4 * C, 0);
    REF(bn_mul, const float *, 4 * C, 0);
    REF(bn_add, const float *, 4 * C, 0);
    REF(residual, const float *, 4 * extent(p->N, C, PH, PW, p->rs_n, p->rs_c, p->rs_h, p->rs_w), 0);
    REF(out, float *, 4 * extent(p->N, C, PH, PW, p->os_n, p->os_c, p->os_h, p->os_w), 1);
    REF(out_packed, uint32_t *, 4 * p->N * PH * PW * ((C + 31) / 32), 1);
    REF(src, const float *, 4 * extent(p->N, C, p->OH, p->OW, p->ss_n, p->ss_c, p->ss_h, p->ss_w), 0);
#undef REF
    return run_driver(&h, sizeof h, &b);
}

int cbcn_pack_signs_f32(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sn, int64_t sc,
                        int64_t sh, int64_t sw, uint32_t *out, int64_t threads) {
    (void)threads;
    blob_plan b = {0};
    int64_t h[11] = {2, N, C, H, W, sn, sc, sh, sw, 0, 0};
    h[9] = (int64_t)add(&b, x, 4 * extent(N, C, H, W, sn, sc, sh, sw), 0);
    h[10] = (int64_t)add(&b, out, 4 * N * H * W * ((C + 31) / 32), 1);
    return run_driver(h, sizeof h, &b);
}
