/* The CPU engine as PyTorch operators, namespace `cbcn` (the schemas are defined here, so this
 * library alone is what a deployed model needs: torch.ops.load_library, or `import cbcn.onebit.ops`).
 *
 *   cbcn::binary_conv2d(x_packed, weight, in_channels, stride, padding, ksum, <epilogue>) -> (real, packed)
 *       a packed binary conv and its fused epilogue (cbcn.onebit.backends.epilogue.Epilogue);
 *   cbcn::epilogue(src, <epilogue>) -> (real, packed)
 *       the same epilogue on the values of a float tensor (e.g. a full-precision layer's output);
 *   cbcn::pack_signs(x) -> packed
 *   <epilogue> = scale, bias, pool (0, 2: MaxPool2d(2), 3: AvgPool2d(2, ceil)), relu, bn_mul, bn_add,
 *                bn_fma, residual, real, packed, channels_last, engine
 *   An output not asked for (real / packed false) is an empty tensor.
 *
 * The arithmetic is bconv.c's, compiled once per instruction-set variant (native.py): each
 * build is an "engine", loaded here with dlopen (cbcn::load_engine) under a name, the first
 * one loaded being the default. `engine` picks another by name (tests, A/B benchmarks).
 *
 * `weight` is the packed bank of the contract, (C_out, KH, KW, ceil(C_in/32)), or with ksum = K
 * a CBConv's K-sum bank over the C_in/K maps, which is expanded to the full CiF bank here (XOR +
 * popcount needs each channel's sign). The engine's own layout of the bank (cbcn_prepare_weights)
 * is cached per weight tensor, engine and version: computed on the first call, reused while the
 * tensor lives unmodified (a deployed model's constants are prepared once).
 */
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bconv.h"

namespace {

/* The profiler event around each engine call: what the engine's own arithmetic takes, apart from
 * the operator's argument handling and whatever calls it (benchmarks/cpu_engine_bench.py). */
constexpr const char *ENGINE_EVENT = "cbcn engine";

/* One variant's build of bconv.c, loaded. */
struct Engine {
    std::string name, path;
    void *handle = nullptr;
    int lanes = 0;
    int (*binary_conv)(const cbcn_conv_params *) = nullptr;
    int (*pack_signs_f32)(const float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                          uint32_t *, int64_t) = nullptr;
    int64_t (*prepared_words)(int64_t, int64_t, int64_t, int64_t) = nullptr;
    int (*prepare_weights)(const uint32_t *, int64_t, int64_t, int64_t, int64_t, uint32_t *) = nullptr;
    int64_t (*popcount_peak)(int64_t) = nullptr;
};

std::mutex engines_mutex;
std::map<std::string, std::unique_ptr<Engine>> engines;  // never removed: cached weights point at them
std::string default_engine;
std::atomic<const Engine *> default_engine_ptr{nullptr};  // the same, without the lock and the lookup

template <typename F>
F symbol(void *handle, const char *name, const std::string &path) {
    void *f = dlsym(handle, name);
    TORCH_CHECK(f != nullptr, "cbcn: ", path, " has no symbol ", name, " (not a CPU engine build)");
    return reinterpret_cast<F>(f);
}

/* Loads the engine build at `path` under `name` (again: a no-op); returns its lanes. */
int64_t load_engine(const std::string &name, const std::string &path) {
    std::lock_guard<std::mutex> lock(engines_mutex);
    auto found = engines.find(name);
    if (found != engines.end()) {
        TORCH_CHECK(found->second->path == path, "cbcn: engine '", name, "' is already loaded from ",
                    found->second->path);
        return found->second->lanes;
    }
    void *handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    TORCH_CHECK(handle != nullptr, "cbcn: cannot load engine '", name, "': ", dlerror());
    auto e = std::make_unique<Engine>();
    e->name = name;
    e->path = path;
    e->handle = handle;
    const int abi = symbol<int (*)(void)>(handle, "cbcn_abi_version", path)();
    TORCH_CHECK(abi == CBCN_ABI_VERSION, "cbcn: ", path, " has ABI ", abi, ", these operators need ", CBCN_ABI_VERSION);
    e->lanes = symbol<int (*)(void)>(handle, "cbcn_lanes", path)();
    e->binary_conv = symbol<decltype(e->binary_conv)>(handle, "cbcn_binary_conv", path);
    e->pack_signs_f32 = symbol<decltype(e->pack_signs_f32)>(handle, "cbcn_pack_signs_f32", path);
    e->prepared_words = symbol<decltype(e->prepared_words)>(handle, "cbcn_prepared_words", path);
    e->prepare_weights = symbol<decltype(e->prepare_weights)>(handle, "cbcn_prepare_weights", path);
    e->popcount_peak = symbol<decltype(e->popcount_peak)>(handle, "cbcn_popcount_peak", path);
    const int64_t lanes = e->lanes;
    const Engine *loaded = e.get();
    engines.emplace(name, std::move(e));
    if (default_engine.empty()) {
        default_engine = name;
        default_engine_ptr = loaded;
    }
    return lanes;
}

void set_default_engine(const std::string &name) {
    std::lock_guard<std::mutex> lock(engines_mutex);
    auto found = engines.find(name);
    TORCH_CHECK(found != engines.end(), "cbcn: no engine '", name, "' is loaded");
    default_engine = name;
    default_engine_ptr = found->second.get();
}

std::string current_engine() {
    std::lock_guard<std::mutex> lock(engines_mutex);
    return default_engine;
}

const Engine &engine(const std::optional<std::string> &name) {
    if (!name.has_value())
        if (const Engine *e = default_engine_ptr.load(std::memory_order_acquire)) return *e;
    std::lock_guard<std::mutex> lock(engines_mutex);
    const std::string &key = name.has_value() ? *name : default_engine;
    TORCH_CHECK(!key.empty(), "cbcn: no CPU engine is loaded; `import cbcn.onebit.ops` (or call "
                "cbcn.onebit.ops.load()) before running a 1-bit model");
    auto found = engines.find(key);
    TORCH_CHECK(found != engines.end(), "cbcn: no engine '", key, "' is loaded");
    return *found->second;
}

int64_t words_for(int64_t channels) { return (channels + 31) / 32; }

/* A CPU tensor for an operator's output, allocated directly (at::empty goes through the dispatcher). */
at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous) {
    return at::detail::empty_cpu(sizes, dtype, /*pin_memory=*/false, format);
}

void check_packed(const at::Tensor &t, const char *what, int64_t dims) {
    TORCH_CHECK(t.device().is_cpu(), "cbcn: ", what, " must be a CPU tensor, got ", t.device());
    TORCH_CHECK(t.scalar_type() == at::kInt, "cbcn: ", what, " must hold packed bits as int32, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == dims, "cbcn: ", what, " must have ", dims, " dimensions, got ", t.sizes());
}

/* ---- the bank: a K-sum bank expanded, then laid out for the engine; cached ------------------- */
/* (C_out, KH, KW, words(maps)) over maps = C_in / K -> (C_out, KH, KW, words(C_in)): channel c·K + k
 * of the full CiF bank is map c's filter (SPEC §2). */
at::Tensor full_bank(const at::Tensor &bank, int64_t in_channels, int64_t ksum) {
    const int64_t C_out = bank.size(0), KH = bank.size(1), KW = bank.size(2), WW = bank.size(3);
    const int64_t XW = words_for(in_channels), maps = in_channels / ksum;
    at::Tensor full = empty_output({C_out, KH, KW, XW}, at::kInt);
    const uint32_t *src = reinterpret_cast<const uint32_t *>(bank.data_ptr<int32_t>());
    uint32_t *dst = reinterpret_cast<uint32_t *>(full.data_ptr<int32_t>());
    for (int64_t t = 0; t < C_out * KH * KW; t++) {
        const uint32_t *s = src + t * WW;
        uint32_t *d = dst + t * XW;
        for (int64_t w = 0; w < XW; w++) d[w] = 0;
        for (int64_t c = 0; c < maps; c++)
            if ((s[c / 32] >> (c % 32)) & 1u)
                for (int64_t k = 0; k < ksum; k++) d[(c * ksum + k) / 32] |= 1u << ((c * ksum + k) % 32);
    }
    return full;
}

struct PreparedKey {
    const c10::TensorImpl *weight;
    const Engine *engine;
    int64_t in_channels, ksum;
    bool operator<(const PreparedKey &o) const {
        return std::tie(weight, engine, in_channels, ksum) < std::tie(o.weight, o.engine, o.in_channels, o.ksum);
    }
};

struct Prepared {
    c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> source;  // holds the address while cached
    int64_t version;
    at::Tensor words;
};

std::mutex prepared_mutex;
std::map<PreparedKey, Prepared> prepared_cache;
size_t purge_at = 64;

int64_t version_of(const at::Tensor &t) { return t.is_inference() ? -1 : static_cast<int64_t>(t._version()); }

at::Tensor prepared_weights(const Engine &e, const at::Tensor &weight, int64_t in_channels, int64_t ksum) {
    const PreparedKey key{weight.unsafeGetTensorImpl(), &e, in_channels, ksum};
    const int64_t version = version_of(weight);
    {
        std::lock_guard<std::mutex> lock(prepared_mutex);
        auto found = prepared_cache.find(key);
        if (found != prepared_cache.end() && !found->second.source.expired() && found->second.version == version)
            return found->second.words;
    }
    at::Tensor bank = weight.contiguous();
    if (ksum > 1) bank = full_bank(bank, in_channels, ksum);
    const int64_t C_out = bank.size(0), KH = bank.size(1), KW = bank.size(2);
    at::Tensor words = empty_output({e.prepared_words(C_out, in_channels, KH, KW)}, at::kInt);
    const int rc = e.prepare_weights(reinterpret_cast<const uint32_t *>(bank.data_ptr<int32_t>()), C_out, in_channels,
                                     KH, KW, reinterpret_cast<uint32_t *>(words.data_ptr<int32_t>()));
    TORCH_CHECK(rc == 0, "cbcn: the engine could not prepare the weights (code ", rc, ")");
    std::lock_guard<std::mutex> lock(prepared_mutex);
    prepared_cache.insert_or_assign(key, Prepared{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                                             weight.getIntrusivePtr()), version, words});
    if (prepared_cache.size() >= purge_at) {  // drop the entries of weights that died
        for (auto it = prepared_cache.begin(); it != prepared_cache.end();)
            it = it->second.source.expired() ? prepared_cache.erase(it) : std::next(it);
        purge_at = std::max<size_t>(64, 2 * prepared_cache.size());
    }
    return words;
}

/* ---- the epilogue's arguments into the parameter struct; the outputs allocated --------------- */
/* `t` itself where it is already float32 (and contiguous, if asked): no dispatcher call on the
 * common path, which at batch 1 costs as much as a small layer's arithmetic; else a converted
 * copy, kept alive in `keep` for the engine call. */
const at::Tensor &as_float(const at::Tensor &t, bool contiguous, std::vector<at::Tensor> &keep) {
    if (t.scalar_type() == at::kFloat && (!contiguous || t.is_contiguous())) return t;
    keep.push_back(contiguous ? t.to(at::kFloat).contiguous() : t.to(at::kFloat));
    return keep.back();
}

const float *vector_arg(const std::optional<at::Tensor> &v, int64_t C_out, const char *what,
                        std::vector<at::Tensor> &keep) {
    if (!v.has_value()) return nullptr;
    TORCH_CHECK(v->device().is_cpu() && v->is_floating_point(), "cbcn: ", what, " must be a floating CPU tensor");
    TORCH_CHECK(v->dim() == 1 && v->size(0) == C_out, "cbcn: ", what, " must have shape (", C_out, "), got ",
                v->sizes());
    return as_float(*v, true, keep).data_ptr<float>();
}

int64_t pooled(int64_t n, int64_t pool) { return pool == 2 ? n / 2 : pool == 3 ? (n + 1) / 2 : n; }

std::tuple<at::Tensor, at::Tensor> run(const Engine &e, cbcn_conv_params &p, int64_t N, int64_t C_out, int64_t OH,
                                       int64_t OW, const std::optional<at::Tensor> &scale,
                                       const std::optional<at::Tensor> &bias, int64_t pool, bool relu,
                                       const std::optional<at::Tensor> &bn_mul, const std::optional<at::Tensor> &bn_add,
                                       bool bn_fma, const std::optional<at::Tensor> &residual, bool real, bool packed,
                                       bool channels_last, std::vector<at::Tensor> &keep) {
    TORCH_CHECK(pool == 0 || pool == 2 || pool == 3, "cbcn: pool must be 0 (none), 2 (max 2x2) or 3 (avg 2x2), got ",
                pool);
    TORCH_CHECK(pool != 2 || (OH >= 2 && OW >= 2), "cbcn: a 2x2 max-pool needs an input of at least 2x2, got ", OH,
                "x", OW);
    TORCH_CHECK(real || packed, "cbcn: an epilogue must produce the real output, the packed signs, or both");
    TORCH_CHECK(bn_mul.has_value() == bn_add.has_value(), "cbcn: the batch-norm needs both bn_mul and bn_add");
    const int64_t PH = pooled(OH, pool), PW = pooled(OW, pool);
    p.N = N, p.C_out = C_out, p.OH = OH, p.OW = OW, p.pool = pool, p.relu = relu, p.bn_fma = bn_fma;
    p.scale = vector_arg(scale, C_out, "scale", keep);
    p.bias = vector_arg(bias, C_out, "bias", keep);
    p.bn_mul = vector_arg(bn_mul, C_out, "bn_mul", keep);
    p.bn_add = vector_arg(bn_add, C_out, "bn_add", keep);
    if (residual.has_value()) {
        TORCH_CHECK(residual->device().is_cpu() && residual->dim() == 4 && residual->size(0) == N &&
                        residual->size(1) == C_out && residual->size(2) == PH && residual->size(3) == PW,
                    "cbcn: residual must have the output's shape (", N, ", ", C_out, ", ", PH, ", ", PW, "), got ",
                    residual->sizes());
        const at::Tensor &r = as_float(*residual, false, keep);
        p.residual = r.data_ptr<float>();
        p.rs_n = r.stride(0), p.rs_c = r.stride(1), p.rs_h = r.stride(2), p.rs_w = r.stride(3);
    }
    at::Tensor out = real ? empty_output({N, C_out, PH, PW}, at::kFloat,
                                         channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous)
                          : empty_output({0}, at::kFloat);
    at::Tensor out_packed = packed ? empty_output({N, PH, PW, words_for(C_out)}, at::kInt) : empty_output({0}, at::kInt);
    if (real) {
        p.out = out.data_ptr<float>();
        p.os_n = out.stride(0), p.os_c = out.stride(1), p.os_h = out.stride(2), p.os_w = out.stride(3);
    }
    if (packed) p.out_packed = reinterpret_cast<uint32_t *>(out_packed.data_ptr<int32_t>());
    p.threads = at::get_num_threads();
    if (N > 0 && PH > 0 && PW > 0) {
        RECORD_FUNCTION(ENGINE_EVENT, std::vector<c10::IValue>());
        const int rc = e.binary_conv(&p);
        TORCH_CHECK(rc == 0, "cbcn: the engine failed (code ", rc, ": ", rc == -1 ? "bad arguments" : "out of memory",
                    ")");
    }
    return {out, out_packed};
}

/* ---- the operators ----------------------------------------------------------------------------- */
std::tuple<at::Tensor, at::Tensor> binary_conv2d(
    const at::Tensor &x_packed, const at::Tensor &weight, int64_t in_channels, int64_t stride, int64_t padding,
    int64_t ksum, const std::optional<at::Tensor> &scale, const std::optional<at::Tensor> &bias, int64_t pool,
    bool relu, const std::optional<at::Tensor> &bn_mul, const std::optional<at::Tensor> &bn_add, bool bn_fma,
    const std::optional<at::Tensor> &residual, bool real, bool packed, bool channels_last,
    const std::optional<std::string> &engine_name) {
    check_packed(x_packed, "x_packed", 4);
    check_packed(weight, "weight", 4);
    TORCH_CHECK(in_channels >= 1 && ksum >= 1 && in_channels % ksum == 0, "cbcn: in_channels=", in_channels,
                " must be positive and a multiple of ksum=", ksum);
    TORCH_CHECK(stride >= 1 && padding >= 0, "cbcn: stride must be >= 1 and padding >= 0, got ", stride, ", ", padding);
    const int64_t N = x_packed.size(0), H = x_packed.size(1), W = x_packed.size(2), XW = x_packed.size(3);
    const int64_t C_out = weight.size(0), KH = weight.size(1), KW = weight.size(2);
    TORCH_CHECK(XW == words_for(in_channels) && weight.size(3) == words_for(in_channels / ksum),
                "cbcn: in_channels=", in_channels, " (ksum=", ksum, ") needs ", words_for(in_channels),
                " activation words and ", words_for(in_channels / ksum), " weight words, got ", XW, " and ",
                weight.size(3));
    const int64_t OH = (H + 2 * padding - KH) / stride + 1, OW = (W + 2 * padding - KW) / stride + 1;
    TORCH_CHECK(OH >= 1 && OW >= 1, "cbcn: input ", H, "x", W, " too small for a ", KH, "x", KW,
                " kernel with padding ", padding);
    const Engine &e = engine(engine_name);
    std::vector<at::Tensor> keep;  // converted copies of the arguments, alive until the engine returns
    keep.reserve(6);
    const at::Tensor &x = x_packed.is_contiguous() ? x_packed : keep.emplace_back(x_packed.contiguous());
    at::Tensor words = prepared_weights(e, weight, in_channels, ksum);
    cbcn_conv_params p = {};
    p.x = reinterpret_cast<const uint32_t *>(x.data_ptr<int32_t>());
    p.H = H, p.W = W, p.XW = XW, p.C_in = in_channels;
    p.w = reinterpret_cast<const uint32_t *>(words.data_ptr<int32_t>());
    p.KH = KH, p.KW = KW, p.stride = stride, p.pad = padding;
    return run(e, p, N, C_out, OH, OW, scale, bias, pool, relu, bn_mul, bn_add, bn_fma, residual, real, packed,
               channels_last, keep);
}

std::tuple<at::Tensor, at::Tensor> epilogue(
    const at::Tensor &src, const std::optional<at::Tensor> &scale, const std::optional<at::Tensor> &bias,
    int64_t pool, bool relu, const std::optional<at::Tensor> &bn_mul, const std::optional<at::Tensor> &bn_add,
    bool bn_fma, const std::optional<at::Tensor> &residual, bool real, bool packed, bool channels_last,
    const std::optional<std::string> &engine_name) {
    TORCH_CHECK(src.device().is_cpu() && src.dim() == 4 && src.is_floating_point() && src.size(1) >= 1,
                "cbcn: the epilogue's source must be a floating CPU tensor (N, C, H, W), got ", src.sizes());
    const Engine &e = engine(engine_name);
    std::vector<at::Tensor> keep;  // converted copies of the arguments, alive until the engine returns
    keep.reserve(6);
    const at::Tensor &s = as_float(src, false, keep);
    cbcn_conv_params p = {};
    p.src = s.data_ptr<float>();
    p.ss_n = s.stride(0), p.ss_c = s.stride(1), p.ss_h = s.stride(2), p.ss_w = s.stride(3);
    return run(e, p, s.size(0), s.size(1), s.size(2), s.size(3), scale, bias, pool, relu, bn_mul, bn_add, bn_fma,
               residual, real, packed, channels_last, keep);
}

at::Tensor pack_signs(const at::Tensor &x, const std::optional<std::string> &engine_name) {
    TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat && x.size(1) >= 1,
                "cbcn: pack_signs packs a float32 CPU tensor (N, C, H, W), got ", x.scalar_type(), " ", x.sizes());
    const Engine &e = engine(engine_name);
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    at::Tensor out = empty_output({N, H, W, words_for(C)}, at::kInt);
    if (out.numel()) {
        RECORD_FUNCTION(ENGINE_EVENT, std::vector<c10::IValue>());
        const int rc = e.pack_signs_f32(x.data_ptr<float>(), N, C, H, W, x.stride(0), x.stride(1), x.stride(2),
                                        x.stride(3), reinterpret_cast<uint32_t *>(out.data_ptr<int32_t>()),
                                        at::get_num_threads());
        TORCH_CHECK(rc == 0, "cbcn: sign packing failed (code ", rc, ")");
    }
    return out;
}

int64_t popcount_peak(int64_t iters, const std::optional<std::string> &engine_name) {
    return engine(engine_name).popcount_peak(iters);
}

/* ---- the C shims an AOTInductor package calls directly -------------------------------------------
 * AOTInductor calls a custom operator through its proxy executor (boxing every argument, a
 * dispatcher call) unless it is told of a C function with the operator's arguments in its C ABI
 * (config aot_inductor.custom_ops_to_c_shims, declarations in operators.py: AOTI_SHIMS); these are
 * they, named aoti_torch_cpu_<operator>. Tensor? arrives as a pointer to a handle (NULL: None),
 * bool as int32_t, str? as a pointer to a C string; the outputs are written to handle pointers. */
std::optional<at::Tensor> optional_tensor(AtenTensorHandle *handle) {
    if (handle == nullptr) return std::nullopt;
    return *torch::aot_inductor::tensor_handle_to_tensor_pointer(*handle);
}

std::optional<std::string> optional_string(const char **text) {
    return text == nullptr ? std::nullopt : std::optional<std::string>(*text);
}

const at::Tensor &tensor(AtenTensorHandle handle) { return *torch::aot_inductor::tensor_handle_to_tensor_pointer(handle); }

void set_outputs(std::tuple<at::Tensor, at::Tensor> outputs, AtenTensorHandle *real, AtenTensorHandle *packed) {
    if (real != nullptr) *real = torch::aot_inductor::new_tensor_handle(std::move(std::get<0>(outputs)));
    if (packed != nullptr) *packed = torch::aot_inductor::new_tensor_handle(std::move(std::get<1>(outputs)));
}

}  // namespace

/* Each shim's parameter list, written once: the definition below and the declaration AOTInductor
 * puts in a package's code (cbcn::aoti_shims) are both made from it. */
#define CBCN_BINARY_CONV2D_SHIM_ARGS                                                                          \
    (AtenTensorHandle x_packed, AtenTensorHandle weight, int64_t in_channels, int64_t stride, int64_t padding,  \
     int64_t ksum, AtenTensorHandle *scale, AtenTensorHandle *bias, int64_t pool, int32_t relu,                 \
     AtenTensorHandle *bn_mul, AtenTensorHandle *bn_add, int32_t bn_fma, AtenTensorHandle *residual,             \
     int32_t real, int32_t packed, int32_t channels_last, const char **engine_name, AtenTensorHandle *out_real, \
     AtenTensorHandle *out_packed)
#define CBCN_EPILOGUE_SHIM_ARGS                                                                              \
    (AtenTensorHandle src, AtenTensorHandle *scale, AtenTensorHandle *bias, int64_t pool, int32_t relu,        \
     AtenTensorHandle *bn_mul, AtenTensorHandle *bn_add, int32_t bn_fma, AtenTensorHandle *residual,             \
     int32_t real, int32_t packed, int32_t channels_last, const char **engine_name, AtenTensorHandle *out_real, \
     AtenTensorHandle *out_packed)
#define CBCN_PACK_SIGNS_SHIM_ARGS (AtenTensorHandle x, const char **engine_name, AtenTensorHandle *out)
#define CBCN_TEXT(x) #x
#define CBCN_TEXT_OF(x) CBCN_TEXT(x)

namespace {
std::vector<std::string> aoti_shims() {
    return {"AOTITorchError aoti_torch_cpu_binary_conv2d" CBCN_TEXT_OF(CBCN_BINARY_CONV2D_SHIM_ARGS),
            "AOTITorchError aoti_torch_cpu_epilogue" CBCN_TEXT_OF(CBCN_EPILOGUE_SHIM_ARGS),
            "AOTITorchError aoti_torch_cpu_pack_signs" CBCN_TEXT_OF(CBCN_PACK_SIGNS_SHIM_ARGS)};
}
}  // namespace

extern "C" {

AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_binary_conv2d CBCN_BINARY_CONV2D_SHIM_ARGS {
    AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
        set_outputs(binary_conv2d(tensor(x_packed), tensor(weight), in_channels, stride, padding, ksum,
                                  optional_tensor(scale), optional_tensor(bias), pool, relu != 0,
                                  optional_tensor(bn_mul), optional_tensor(bn_add), bn_fma != 0,
                                  optional_tensor(residual), real != 0, packed != 0, channels_last != 0,
                                  optional_string(engine_name)),
                    out_real, out_packed);
    });
}

AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_epilogue CBCN_EPILOGUE_SHIM_ARGS {
    AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
        set_outputs(epilogue(tensor(src), optional_tensor(scale), optional_tensor(bias), pool, relu != 0,
                             optional_tensor(bn_mul), optional_tensor(bn_add), bn_fma != 0, optional_tensor(residual),
                             real != 0, packed != 0, channels_last != 0, optional_string(engine_name)),
                    out_real, out_packed);
    });
}

AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_pack_signs CBCN_PACK_SIGNS_SHIM_ARGS {
    AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
        *out = torch::aot_inductor::new_tensor_handle(pack_signs(tensor(x), optional_string(engine_name)));
    });
}

}  // extern "C"

#define CBCN_EPILOGUE_ARGS                                                                                  \
    "Tensor? scale, Tensor? bias, int pool, bool relu, Tensor? bn_mul, Tensor? bn_add, bool bn_fma, "      \
    "Tensor? residual, bool real, bool packed, bool channels_last, str? engine=None"

TORCH_LIBRARY(cbcn, m) {
    m.def("binary_conv2d(Tensor x_packed, Tensor weight, int in_channels, int stride, int padding, int ksum, "
          CBCN_EPILOGUE_ARGS ") -> (Tensor, Tensor)");
    m.def("epilogue(Tensor src, " CBCN_EPILOGUE_ARGS ") -> (Tensor, Tensor)");
    m.def("pack_signs(Tensor x, str? engine=None) -> Tensor");
    m.def("load_engine(str name, str path) -> int", &load_engine);
    m.def("set_default_engine(str name) -> ()", &set_default_engine);
    m.def("default_engine() -> str", &current_engine);
    m.def("popcount_peak(int iters, str? engine=None) -> int", &popcount_peak);
    m.def("aoti_shims() -> str[]", &aoti_shims);
}

TORCH_LIBRARY_IMPL(cbcn, CPU, m) {
    m.impl("binary_conv2d", &binary_conv2d);
    m.impl("epilogue", &epilogue);
    m.impl("pack_signs", &pack_signs);
}
