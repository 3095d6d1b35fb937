// The interface between the op layer (se_cuda.cu: checks, allocation, the path heuristic)
// and the kernel translation units (forward_cluster.cu, forward_persistent.cu,
// backward_persistent.cu). Host-only C++; the kernel units include no ATen header, which
// keeps their compile time down.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "se_kernels/cuda_plan.h"

namespace se_kernels {
namespace cuda {

enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2, kDouble = 3 };

// One se_forward call. Tensors of x's shape are NCHW or NHWC (nhwc) and dense; z, hpre,
// gpre are in the accumulation type (float, double for double).
struct ForwardArgs {
  const void* x;         // (N, C, H, W)
  const void* w1;        // (Cr, C)
  const void* w2;        // (C, Cr)
  const void* b1;        // (Cr,) or null
  const void* b2;        // (C,) or null
  const void* residual;  // like x, or null
  void* y;               // like x
  void* z;               // (N, C)
  void* hpre;            // (N, Cr)
  void* gpre;            // (N, C)
  int64_t N, C, Cr, HW;
  DType dtype;
  bool nhwc, max_squeeze;
  int act, gate;
  bool vec;  // every access of x/y/residual may be a 16-byte vector (see se_cuda.cu)
};

// One se_backward call.
struct BackwardArgs {
  const void* dy;    // like x
  const void* x;     // (N, C, H, W)
  const void* w1;    // (Cr, C)
  const void* w2;    // (C, Cr)
  const void* y;     // like x (the fused residual's relu mask), or null
  const void* z;     // (N, C)  accumulation type
  const void* hpre;  // (N, Cr)
  const void* gpre;  // (N, C)
  void* dx;          // like x
  void* dw1;         // (Cr, C)
  void* dw2;         // (C, Cr)
  void* db1;         // (Cr,)
  void* db2;         // (C,)
  void* dres;        // like x, or null
  int64_t N, C, Cr, HW;
  DType dtype;
  bool nhwc, max_squeeze;
  int act, gate;
  bool vec;
};

using counter_t = unsigned long long;

// Counters of a persistent launch, zeroed on the stream before it: the ticket dispenser, the
// number of finished last-stage FC items (all groups), then per FC group the finished reduce
// items, the finished last-stage FC items (the apply items' flag: ready when it reaches
// FcItems::n2), the "squeeze combined" flag (stage-1 FC items wait for it) and the finished
// stage-1 FC items (stage-2 items wait for FcItems::n1).
// base is 128-byte aligned (se_cuda.cu rounds it up) and each kind starts a 128-byte line (kLine
// counters): the ticket, which every CTA takes with an atomic per item, and fc_done (atomics
// from the last-stage FC items, polled by the tail items) each have a line of their own; the
// per-group arrays (atomics from reduce and FC items; flags polled by waiting CTAs) never
// share a line with each other or with the ticket.
// stride is lines(groups), computed on the host (PersistentConfig::counter_stride): a kernel
// parameter the compiler reads from the constant bank where it is used, instead of a rounded
// value kept in registers (that cost the half/bf16 forward kernels 12-20 bytes of spills).
struct Counters {
  static constexpr int64_t kLine = 128 / int64_t(sizeof(counter_t));
  counter_t* base;
  int64_t stride;  // lines(groups)
  static SE_HOST_DEVICE int64_t lines(int64_t n) { return (n + kLine - 1) / kLine * kLine; }
  SE_HOST_DEVICE counter_t* ticket() const { return base; }
  SE_HOST_DEVICE counter_t* fc_done() const { return base + kLine; }
  SE_HOST_DEVICE counter_t* arrive() const { return base + 2 * kLine; }
  SE_HOST_DEVICE counter_t* ready() const { return base + 2 * kLine + stride; }
  SE_HOST_DEVICE counter_t* squeezed() const { return base + 2 * kLine + 2 * stride; }
  SE_HOST_DEVICE counter_t* fc1_done() const { return base + 2 * kLine + 3 * stride; }
  static int64_t count(int64_t groups) { return 2 * kLine + 4 * lines(groups); }
};

// Workspace of a persistent launch in the accumulation type, offsets in elements.
//   forward:  partial (N x npb x C) squeeze partials per pixel block, s (N x C) the gate
//   backward: partial (N x npb x C) sum(g x) partials, cnt (N x npb x C, max only) tie
//             counts, s, coef (N x C), dpre (N x C), dhpre and h (N x Cr)
struct Workspace {
  int64_t partial = 0, cnt = 0, s = 0, coef = 0, dpre = 0, dhpre = 0, h = 0, total = 0;
};

struct PersistentConfig {
  cuda_plan::Tiles tiles;
  cuda_plan::Schedule sched;
  cuda_plan::FcItems fc;  // the FC items of a group (row / column blocks)
  int64_t G;          // samples per FC group
  int64_t grid;       // CTAs
  int64_t smem;       // dynamic shared memory, bytes
  void* ws;           // Workspace, accumulation type
  Workspace off;
  counter_t* counters;  // Counters::count(groups), zeroed, 128-byte aligned
  int64_t counter_stride;  // Counters::lines(groups)
  int64_t groups;
  bool flat_vec;  // NCHW: tiles of whole rows are 16-byte aligned spans (flat vector passes)
};

struct ClusterConfig {
  int K, G;        // CTAs per cluster, samples per cluster
  int64_t Cc;      // channels per CTA
  int64_t smem;    // dynamic shared memory per CTA, bytes
  int64_t groups;  // clusters: ceil(N / G)
  bool flat_vec;   // NCHW: each CTA's span of a slab may be copied/written 16 bytes at a time
  cuda_plan::ClusterSmem smem_layout;
};

// forward_cluster.cu (sm_90 code; elsewhere the kernel is an empty shell that is never run)
bool forward_cluster_compiled(const ForwardArgs& a);  // sm_90 machine code for this device
// Clusters of shape c that can be co-resident, queried on the launch stream (cached).
int forward_cluster_max_active(const ForwardArgs& a, const ClusterConfig& c,
                               cudaStream_t stream);
// False when the launch was refused for want of cluster resources (the error is cleared,
// nothing was enqueued: the caller falls back); other errors raise.
bool launch_forward_cluster(const ForwardArgs& a, const ClusterConfig& c, cudaStream_t stream);

// forward_persistent.cu
int forward_persistent_blocks_per_sm(const ForwardArgs& a, int64_t smem);
void launch_forward_persistent(const ForwardArgs& a, const PersistentConfig& c,
                               cudaStream_t stream);

// backward_persistent.cu
int backward_persistent_blocks_per_sm(const BackwardArgs& a, int64_t smem);
void launch_backward_persistent(const BackwardArgs& a, const PersistentConfig& c,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace se_kernels
