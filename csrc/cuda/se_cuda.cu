// se_kernels::se_forward and se_backward for the CUDA key: argument checks, outputs, the
// choice of kernel path, workspace, launch. The kernels are in forward_cluster.cu,
// forward_persistent.cu and backward_persistent.cu (see docs/perf-notes.md, "CUDA backend").
//
// Forward paths (both one launch; they agree with the reference to rounding):
//   cluster     sm_90, float/half/bfloat16, when a cluster of <= 16 CTAs holds the slab of
//               a group of samples in shared memory: HBM sees x once.
//   persistent  any architecture, dtype and size: squeeze partials, per-group FC, then the
//               scale re-reads x from L2.
// The heuristic takes the cluster path whenever it can run, except inside CUDA graph capture
// before an eager launch of that cluster size and shared memory has succeeded on the device
// (a refused launch would probably invalidate the capture): that call takes the persistent
// path and warns once. Environment
// switches, read at every call (for tests and tuning; none is needed in normal use):
//   SE_KERNELS_CUDA_PATH=auto|cluster|persistent   force a forward path; forcing a path that
//                                                  cannot run this call raises an error
//   SE_KERNELS_CUDA_CLUSTER=K,G   cluster shape (CTAs per cluster, samples per cluster)
//   SE_KERNELS_CUDA_MAX_CLUSTER=K largest cluster the planner may pick (1..16; 8 plans as a
//                                 device that refuses non-portable sizes would)
//   SE_KERNELS_CUDA_TILE=BYTES    tile size of the persistent kernels (at most 16 MiB)
//   SE_KERNELS_CUDA_LAG=SAMPLES   how far apply items trail reduce items (persistent)
//   SE_KERNELS_CUDA_FC_BYTES=BYTES  weight bytes per FC item of the persistent kernels
//   SE_KERNELS_CUDA_GRID=CTAS     at most this many CTAs in a persistent launch
// Backward: one persistent launch, no floating-point atomics, so bitwise reproducible and
// valid as it is under torch.use_deterministic_algorithms(True).
//
// Host code only: the device passes of nvcc (__CUDA_ARCH__ defined) skip the whole file, so
// the heavy ATen/torch headers are parsed once, not once per architecture.
#if !defined(__CUDA_ARCH__)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "kernels.h"
#include "se_kernels/checks.h"
#include "se_kernels/cuda_plan.h"

namespace se_kernels {
namespace cuda {
namespace {

namespace plan = cuda_plan;

// ---- environment switches ------------------------------------------------------------------

enum class Path { kAuto, kCluster, kPersistent };

Path forward_path_from_env() {
  const char* v = std::getenv("SE_KERNELS_CUDA_PATH");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Path::kAuto;
  if (std::strcmp(v, "cluster") == 0) return Path::kCluster;
  if (std::strcmp(v, "persistent") == 0) return Path::kPersistent;
  TORCH_CHECK(false, "se_kernels: SE_KERNELS_CUDA_PATH must be auto, cluster or persistent, got '",
              v, "'");
}

// A positive integer from the environment (non-negative with lo = 0), or `fallback` when
// unset (0: "use the default").
int64_t env_int(const char* name, int64_t fallback, int64_t lo = 1) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long r = std::strtoll(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && r >= lo, "se_kernels: ", name, " must be a ",
              lo > 0 ? "positive" : "non-negative", " integer, got '", v, "'");
  return r;
}

// SE_KERNELS_CUDA_TILE: at most 16 MiB, so that every in-tile offset of the tile passes
// (32-bit) stays far from 2^31 elements.
int64_t env_tile_bytes() {
  const int64_t t = env_int("SE_KERNELS_CUDA_TILE", 0);
  TORCH_CHECK(t <= (int64_t(1) << 24), "se_kernels: SE_KERNELS_CUDA_TILE must be at most ",
              int64_t(1) << 24, " bytes, got ", t);
  return t;
}

// SE_KERNELS_CUDA_CLUSTER=K,G
bool env_cluster_shape(int& K, int& G) {
  const char* v = std::getenv("SE_KERNELS_CUDA_CLUSTER");
  if (v == nullptr || *v == '\0') return false;
  char* end = nullptr;
  const long k = std::strtol(v, &end, 10);
  bool ok = end != v && *end == ',';
  long g = 0;
  if (ok) {
    const char* rest = end + 1;
    g = std::strtol(rest, &end, 10);
    ok = end != rest && *end == '\0';
  }
  TORCH_CHECK(ok && k >= 1 && k <= plan::kMaxCluster && g >= 1 && g <= plan::kMaxGroup,
              "se_kernels: SE_KERNELS_CUDA_CLUSTER must be K,G with 1 <= K <= ", plan::kMaxCluster,
              " and 1 <= G <= ", plan::kMaxGroup, ", got '", v, "'");
  K = int(k);
  G = int(g);
  return true;
}

// ---- device and tensor facts ---------------------------------------------------------------

const cudaDeviceProp& device_props(int device) {
  static std::mutex mu;
  static std::map<int, cudaDeviceProp> cache;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it == cache.end()) {
    cudaDeviceProp prop{};
    C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    it = cache.emplace(device, prop).first;
  }
  return it->second;
}

DType dtype_of(c10::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat;
    case at::kHalf:
      return DType::kHalf;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kDouble:
      return DType::kDouble;
    default:
      TORCH_CHECK(false, "se_kernels: unsupported dtype ", t);
  }
}

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

// ---- the persistent plan (forward and backward) --------------------------------------------

template <typename Occupancy>
// vec: the vector width of the tile passes (1: scalar); flat_vec: NCHW spans of whole rows
// may be processed as flat runs of 16-byte vectors (the tensors are 16-byte aligned and
// H*W or C is a multiple of the vector width).
PersistentConfig plan_persistent(const Problem& p, int64_t esize, int64_t asize, int64_t vec,
                                 bool flat_vec, bool backward, bool max_squeeze, bool residual,
                                 bool bf16, const cudaDeviceProp& prop,
                                 Occupancy&& blocks_per_sm) {
  const bool nhwc = p.layout == Layout::NHWC;
  const int64_t V = 16 / esize;
  const int64_t row_align = (!nhwc && flat_vec && p.HW % V != 0) ? V : 1;
  const plan::PersistentShape shape = plan::plan_persistent_shape(
      p.N, p.C, p.HW, p.Cr, nhwc, esize, asize, vec, row_align, backward, residual,
      prop.multiProcessorCount, prop.l2CacheSize, env_tile_bytes(),
      env_int("SE_KERNELS_CUDA_LAG", 0), bf16);
  PersistentConfig c{};
  c.flat_vec = !nhwc && flat_vec;
  c.G = shape.G;
  c.tiles = shape.tiles;
  c.smem = shape.smem;
  TORCH_CHECK(c.smem <= int64_t(prop.sharedMemPerBlockOptin),
              "se_kernels: the persistent kernel needs ", c.smem,
              " bytes of shared memory, more than the device's ", prop.sharedMemPerBlockOptin);
  const int blocks = blocks_per_sm(c.smem);
  TORCH_CHECK(blocks > 0, "se_kernels: the persistent kernel cannot be resident on this device");
  const int64_t sms = prop.multiProcessorCount;
  const int64_t lag = shape.lag;
  const int64_t tail = backward ? plan::WeightGradItems{p.C, p.Cr}.count() : 0;
  c.fc = plan::make_fc_items(p.C, p.Cr, esize, backward, env_int("SE_KERNELS_CUDA_FC_BYTES", 0));
  // the stage-2 FC items trail the stage-1 items by `defer` groups (cuda_plan::Schedule;
  // default lag / 2, SE_KERNELS_CUDA_FC2_DEFER=GROUPS for tests: 0 is the order before 12e)
  c.sched = plan::make_schedule(p.N, c.tiles.count(), c.G, lag, tail, c.fc.n1, c.fc.n2,
                                env_int("SE_KERNELS_CUDA_FC2_DEFER", -1, 0));
  c.grid = plan::min64(c.sched.total(), sms * blocks);
  // a smaller grid (tests: every item order must finish on 1, 2, 3 CTAs); never larger than
  // what is co-resident (not needed for deadlock freedom, cuda_plan::Schedule: CTAs that wait
  // for a slot would only take their tickets late)
  const int64_t grid_cap = env_int("SE_KERNELS_CUDA_GRID", 0);
  if (grid_cap > 0) c.grid = plan::min64(c.grid, grid_cap);
  TORCH_CHECK(c.grid <= INT_MAX, "se_kernels: grid too large");
  c.groups = plan::ceil_div(p.N, c.G);
  // workspace
  const int64_t parts = p.N * c.tiles.npb * p.C;
  Workspace& w = c.off;
  int64_t o = 0;
  w.partial = o;
  o += parts;
  if (backward && max_squeeze) {
    w.cnt = o;
    o += parts;
  }
  w.s = o;
  o += p.N * p.C;
  if (backward) {
    w.coef = o;
    o += p.N * p.C;
    w.dpre = o;
    o += p.N * p.C;
    w.dhpre = o;
    o += p.N * p.Cr;
    w.h = o;
    o += p.N * p.Cr;
  }
  w.total = o;
  return c;
}

// The workspace and zeroed counters of a persistent launch; both stay allocated (stream
// ordered by the caching allocator) until the kernel has run.
struct PersistentBuffers {
  at::Tensor ws, counters;
};

PersistentBuffers allocate(PersistentConfig& c, const at::Tensor& x, cudaStream_t stream) {
  PersistentBuffers b;
  b.ws = at::empty({c.off.total}, x.options().dtype(acc_dtype(x.scalar_type())));
  // the counters start a 128-byte line (kernels.h Counters): one line more than they need,
  // and the base rounded up (the caching allocator's blocks are 512-byte aligned anyway)
  b.counters = at::empty({Counters::count(c.groups) + Counters::kLine},
                         x.options().dtype(at::kLong));
  C10_CUDA_CHECK(cudaMemsetAsync(b.counters.mutable_data_ptr(), 0,
                                 size_t(b.counters.numel()) * sizeof(counter_t), stream));
  c.ws = b.ws.mutable_data_ptr();
  const uintptr_t base = reinterpret_cast<uintptr_t>(b.counters.mutable_data_ptr());
  c.counters = reinterpret_cast<counter_t*>((base + 127) / 128 * 128);
  c.counter_stride = Counters::lines(c.groups);
  return b;
}

// ---- the cluster plan ----------------------------------------------------------------------

// The largest cluster each device has not refused at launch (cudaErrorInvalidClusterSize or
// cudaErrorLaunchOutOfResources: MPS SM limits, green contexts), kMaxCluster until a
// refusal. A refused K > 8 lowers it to 8 (the portable sizes); a refused K <= 8 to K / 2
// (under an MPS SM limit 4 or 2 may fit where 8 does not), and a refused K = 2 or 3 to 0,
// which turns the cluster path off for the device for the rest of the process: the
// persistent path then runs every call.
std::mutex g_cluster_cap_mu;
std::map<int, int> g_cluster_cap;

int cluster_cap(int device) {
  const std::lock_guard<std::mutex> lock(g_cluster_cap_mu);
  const auto it = g_cluster_cap.find(device);
  return it == g_cluster_cap.end() ? plan::kMaxCluster : it->second;
}

// Cluster launches each device has made eagerly, outside graph capture: per cluster size K,
// the most dynamic shared memory per CTA launched at that K. A launch refused inside a
// capture would probably invalidate the capture (the fallback could not rescue that call), so
// under capture the cluster path runs only at a (K, shared memory) no larger than one this
// device has already launched (cluster resources are refused by K and by shared memory per
// CTA); otherwise that call takes the persistent path (se_forward_cuda) and warns once.
std::map<int, std::map<int, int64_t>> g_cluster_launched;  // guarded by g_cluster_cap_mu

bool cluster_launched_before(int device, int K, int64_t smem) {
  const std::lock_guard<std::mutex> lock(g_cluster_cap_mu);
  const auto it = g_cluster_launched.find(device);
  if (it == g_cluster_launched.end()) return false;
  const auto k = it->second.find(K);
  return k != it->second.end() && k->second >= smem;
}

void note_cluster_launched(int device, int K, int64_t smem) {
  const std::lock_guard<std::mutex> lock(g_cluster_cap_mu);
  int64_t& most = g_cluster_launched[device][K];
  most = smem > most ? smem : most;
}

void note_cluster_refused(int device, int K) {
  const std::lock_guard<std::mutex> lock(g_cluster_cap_mu);
  auto it = g_cluster_cap.find(device);
  const int cur = it == g_cluster_cap.end() ? plan::kMaxCluster : it->second;
  const int cap = K > 8 ? 8 : (K / 2 >= 2 ? K / 2 : 0);
  g_cluster_cap[device] = cap < cur ? cap : cur;
}

// Fills `cc` and returns true when the cluster path can run this call; else says why.
bool plan_cluster_launch(const ForwardArgs& a, const Problem& p, const cudaDeviceProp& prop,
                         int device, bool ptrs_aligned, cudaStream_t stream, ClusterConfig& cc,
                         std::string& why) {
  const int64_t env_cap = env_int("SE_KERNELS_CUDA_MAX_CLUSTER", plan::kMaxCluster);
  TORCH_CHECK(env_cap <= plan::kMaxCluster,
              "se_kernels: SE_KERNELS_CUDA_MAX_CLUSTER must be at most ", plan::kMaxCluster,
              ", got ", env_cap);
  const int cap = std::min(cluster_cap(device), int(env_cap));
  if (cap == 0) {
    why = "a cluster launch was refused on this device earlier (cluster resources)";
    return false;
  }
  if (prop.major < 9) {
    why = "it needs sm_90 or newer (the device is sm_" + std::to_string(prop.major) +
          std::to_string(prop.minor) + ")";
    return false;
  }
  if (a.dtype == DType::kDouble) {
    why = "there is no float64 cluster kernel";
    return false;
  }
  if (!forward_cluster_compiled(a)) {
    why = "this build has no sm_90 machine code for the device (see TORCH_CUDA_ARCH_LIST)";
    return false;
  }
  const int64_t esize = a.dtype == DType::kFloat ? 4 : 2, asize = 4, V = 16 / esize;
  const bool flat_vec = ptrs_aligned && (p.HW % V == 0 || p.C % V == 0);
  const int64_t vec = a.nhwc ? (a.vec ? V : 1) : (flat_vec ? V : 1);
  plan::ClusterLimits lim{int64_t(prop.sharedMemPerBlockOptin),
                          int64_t(prop.sharedMemPerMultiprocessor),
                          int64_t(prop.multiProcessorCount), cap};
  int fk = 0, fg = 0;
  const bool forced = env_cluster_shape(fk, fg);
  auto shape = [&]() {
    if (forced) return plan::cluster_shape(p.C, p.HW, p.Cr, esize, asize, a.nhwc, vec, fk, fg, lim);
    return plan::plan_cluster(p.N, p.C, p.HW, p.Cr, esize, asize, a.nhwc, vec,
                              2 * p.C * p.Cr * esize, lim);
  };
  auto fill = [&](const plan::ClusterShape& s) {
    cc.K = s.K;
    cc.G = s.G;
    cc.Cc = s.Cc;
    cc.smem = s.smem;
    cc.groups = plan::ceil_div(p.N, s.G);
    cc.flat_vec = flat_vec;
    cc.smem_layout =
        plan::cluster_smem(s.G, p.C, s.Cc, s.K, p.HW, p.Cr, esize, asize, a.nhwc, vec);
  };
  plan::ClusterShape s = shape();
  if (!s.ok) {
    why = forced ? "SE_KERNELS_CUDA_CLUSTER gives a shape that does not fit"
                 : "a sample's slab does not fit in the shared memory of a cluster";
    return false;
  }
  fill(s);
  if (int64_t(cc.K) * cc.groups > INT_MAX) {
    why = "the grid would be too large";
    return false;
  }
  if (forward_cluster_max_active(a, cc, stream) > 0) return true;
  if (!forced && s.K > 8) {  // 16-CTA clusters need a non-portable size the device may refuse
    lim.max_k = 8;
    s = shape();
    if (s.ok) {
      fill(s);
      if (forward_cluster_max_active(a, cc, stream) > 0) return true;
    }
  }
  why = "no cluster of the planned shape can be resident on this device";
  return false;
}

// ---- the ops -------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_cuda(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& residual, int64_t squeeze, int64_t act, int64_t gate) {
  const Problem p = check_forward_args(x, w1, w2, b1, b2, residual, squeeze, act, gate);
  TORCH_CHECK(x.is_cuda(), "se_kernels: se_forward (CUDA) got x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y, z, hpre, gpre;
  std::tie(y, z, hpre, gpre) = empty_forward_outputs(x, p);
  if (p.N == 0) return {y, z, hpre, gpre};
  const Path path = forward_path_from_env();

  ForwardArgs a{};
  a.x = x.const_data_ptr();
  a.w1 = w1.const_data_ptr();
  a.w2 = w2.const_data_ptr();
  a.b1 = b1 ? b1->const_data_ptr() : nullptr;
  a.b2 = b2 ? b2->const_data_ptr() : nullptr;
  a.residual = residual ? residual->const_data_ptr() : nullptr;
  a.y = y.mutable_data_ptr();
  a.z = z.mutable_data_ptr();
  a.hpre = hpre.mutable_data_ptr();
  a.gpre = gpre.mutable_data_ptr();
  a.N = p.N;
  a.C = p.C;
  a.Cr = p.Cr;
  a.HW = p.HW;
  a.dtype = dtype_of(x.scalar_type());
  a.nhwc = p.layout == Layout::NHWC;
  a.max_squeeze = squeeze == kSqueezeMax;
  a.act = int(act);
  a.gate = int(gate);
  const int64_t esize = x.element_size(), V = 16 / esize;
  const bool ptrs = aligned16(x) && aligned16(y) && (!residual || aligned16(*residual));
  // float64 has no vector path (kHasVecPath in device.cuh)
  a.vec = a.dtype != DType::kDouble && ptrs && (a.nhwc ? p.C % V == 0 : p.HW % V == 0);

  const int device = x.get_device();
  const cudaDeviceProp& prop = device_props(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();

  if (path != Path::kPersistent) {
    std::string why;
    ClusterConfig cc{};
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    // At most five tries: a refused launch lowers the device's cluster cap (16 -> 8 -> 4 ->
    // 2 -> off) and plans again; a refusal leaves nothing enqueued and no error set.
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (!plan_cluster_launch(a, p, prop, device, ptrs, stream, cc, why)) break;
      // Under graph capture only a cluster shape this device has launched eagerly (a refusal
      // there would probably invalidate the capture); a forced cluster path still tries.
      if (capturing && path != Path::kCluster &&
          !cluster_launched_before(device, cc.K, cc.smem)) {
        why = "under graph capture, and no cluster of " + std::to_string(cc.K) + " CTAs with " +
              std::to_string(cc.smem) +
              " bytes of shared memory each has been launched on this device outside a "
              "capture yet";
        TORCH_WARN_ONCE("se_kernels: the fused SE forward runs its persistent path inside this "
                        "CUDA graph capture (",
                        why,
                        "); run the same shapes once eagerly before capturing to capture the "
                        "cluster path.");
        break;
      }
      if (launch_forward_cluster(a, cc, stream)) {
        if (!capturing) note_cluster_launched(device, cc.K, cc.smem);
        return {y, z, hpre, gpre};
      }
      note_cluster_refused(device, cc.K);
      why = "the launch of a cluster of " + std::to_string(cc.K) +
            " CTAs was refused (cluster resources)";
    }
    TORCH_CHECK(path != Path::kCluster,
                "se_kernels: SE_KERNELS_CUDA_PATH=cluster, but the cluster path cannot run this "
                "call: ",
                why);
  }
  const bool flat_vec = a.dtype != DType::kDouble && ptrs && (p.HW % V == 0 || p.C % V == 0);
  PersistentConfig c = plan_persistent(
      p, esize, z.element_size(), a.vec ? V : 1, flat_vec, /*backward=*/false, a.max_squeeze,
      residual.has_value(), a.dtype == DType::kBFloat16, prop,
      [&](int64_t smem) { return forward_persistent_blocks_per_sm(a, smem); });
  const PersistentBuffers keep = allocate(c, x, stream);
  launch_forward_persistent(a, c, stream);
  return {y, z, hpre, gpre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
se_backward_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1,
                 const at::Tensor& w2, const c10::optional<at::Tensor>& y, const at::Tensor& z,
                 const at::Tensor& hpre, const at::Tensor& gpre, int64_t squeeze, int64_t act,
                 int64_t gate) {
  const Problem p = check_backward_args(dy, x, w1, w2, y, z, hpre, gpre, squeeze, act, gate);
  TORCH_CHECK(x.is_cuda(), "se_kernels: se_backward (CUDA) got x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx, dw1, dw2, db1, db2, dres;
  std::tie(dx, dw1, dw2, db1, db2, dres) = empty_backward_outputs(x, w1, w2, y.has_value(), p);
  if (p.N == 0) {  // sums over an empty batch
    dw1.zero_();
    dw2.zero_();
    db1.zero_();
    db2.zero_();
    return {dx, dw1, dw2, db1, db2, dres};
  }

  BackwardArgs a{};
  a.dy = dy.const_data_ptr();
  a.x = x.const_data_ptr();
  a.w1 = w1.const_data_ptr();
  a.w2 = w2.const_data_ptr();
  a.y = y ? y->const_data_ptr() : nullptr;
  a.z = z.const_data_ptr();
  a.hpre = hpre.const_data_ptr();
  a.gpre = gpre.const_data_ptr();
  a.dx = dx.mutable_data_ptr();
  a.dw1 = dw1.mutable_data_ptr();
  a.dw2 = dw2.mutable_data_ptr();
  a.db1 = db1.mutable_data_ptr();
  a.db2 = db2.mutable_data_ptr();
  a.dres = y ? dres.mutable_data_ptr() : nullptr;
  a.N = p.N;
  a.C = p.C;
  a.Cr = p.Cr;
  a.HW = p.HW;
  a.dtype = dtype_of(x.scalar_type());
  a.nhwc = p.layout == Layout::NHWC;
  a.max_squeeze = squeeze == kSqueezeMax;
  a.act = int(act);
  a.gate = int(gate);
  const int64_t esize = x.element_size(), V = 16 / esize;
  const bool ptrs = aligned16(dy) && aligned16(x) && aligned16(dx) &&
                    (!y || (aligned16(*y) && aligned16(dres)));
  a.vec = a.dtype != DType::kDouble && ptrs && (a.nhwc ? p.C % V == 0 : p.HW % V == 0);

  const int device = x.get_device();
  const cudaDeviceProp& prop = device_props(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const bool flat_vec = a.dtype != DType::kDouble && ptrs && (p.HW % V == 0 || p.C % V == 0);
  PersistentConfig c = plan_persistent(
      p, esize, z.element_size(), a.vec ? V : 1, flat_vec, /*backward=*/true, a.max_squeeze,
      y.has_value(), a.dtype == DType::kBFloat16, prop,
      [&](int64_t smem) { return backward_persistent_blocks_per_sm(a, smem); });
  const PersistentBuffers keep = allocate(c, x, stream);
  launch_backward_persistent(a, c, stream);
  return {dx, dw1, dw2, db1, db2, dres};
}

}  // namespace

TORCH_LIBRARY_IMPL(se_kernels, CUDA, m) {
  m.impl("se_forward", &se_forward_cuda);
  m.impl("se_backward", &se_backward_cuda);
}

}  // namespace cuda
}  // namespace se_kernels

#endif  // !defined(__CUDA_ARCH__)
