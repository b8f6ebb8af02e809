// SPDX-License-Identifier: MIT
#pragma once
/// \file format.h
/// \brief The compressed KV-cache page format: one declaration for the host encoder, the CPU
/// decode op and the CUDA decode kernel (ggml `block_q4_0` style, with static_asserts).
///
/// ## Pages
/// Per (sequence, layer, head) the cache is a list of pages of `page_tokens` tokens (default
/// `kPageTokens` = 64). Inside a page, separate regions, each starting on a 16-byte boundary so a
/// kernel can use 16-byte vector loads on every region:
///
// clang-format off
/// | region   | present when        | size (bytes)   | per-token record                  |
/// |----------|---------------------|----------------|-----------------------------------|
/// | codes    | always              | T × d·bits/8   | d codes, bitpack.h layout         |
/// | norms    | norm == kToken      | T × 2          | fp16 ‖x − μ‖                      |
/// | qjl      | qjl != kNone        | T × m/8        | m sign bits, bitpack 1-bit        |
/// | rnorms   | qjl == kProd        | T × 2          | fp16 ‖r‖ (code space)             |
// clang-format on
///
/// Records are token-major (token t's record is contiguous at `offset + t * record_bytes`), at true
/// density: d·bits is a multiple of 8 for every supported d (16, 24, 32, 64, 128) and bits 1..4, so
/// a 3-bit d = 64 token is exactly 24 bytes and no per-token padding exists. Padding exists only at
/// region ends (≤ 15 bytes each) and in the unused tail of the last page.
///
/// Why 64 tokens: a power of two (token → page is a shift), one page = one unit of split-K work
/// for a warp (2 tokens per lane) in the decode kernel, large enough that region padding is < 1% of
/// a page for every mode, small enough that a typical protein (100–1000 residues) wastes at most
/// a few percent in its last page. FlashInfer/vLLM use 16–64-token pages for the same reasons.
///
/// `bytes_per_token_per_head()` is DESIGN's "memory accounting" number (codes + norms + QJL bits +
/// residual norms, no page padding); `PageLayout::page_bytes / page_tokens` is the allocated rate.

#include <cstddef>
#include <cstdint>
#include <string>

#include "turboesm/error.h"
#include "turboesm/quant/dispatch.h"
#include "turboesm/quant/half.h"
#include "turboesm/quant/host_device.h"

namespace turboesm::quant {

/// Tokens per page (see the file comment for the choice).
inline constexpr int kPageTokens = 64;
/// Alignment of every region start and of the page size, for 16-byte vector loads.
inline constexpr int kRegionAlign = 16;

/// \brief Norm handling of a token vector before rotation.
enum class NormMode : int {
  kNone = 0,   ///< quantize the (centered) vector as is; codebook fitted to raw rotated values
  kToken = 1,  ///< store ‖x − μ‖ as fp16 and quantize the unit vector (TurboQuant)
};

/// \brief 1-bit QJL residual correction (K only in the model).
enum class QjlMode : int {
  kNone = 0,  ///< no residual bits
  kSign = 1,  ///< seed behaviour: sign(r) per coordinate, ẑ += sign(r)·s (biased), m = d
  kProd = 2,  ///< TurboQuant_prod: sign(S r) for Gaussian S [m × d] and ‖r‖, unbiased ⟨q, x⟩
};

/// \brief Byte offsets of the regions of one page. Computed by make_page_layout (constexpr).
struct PageLayout {
  int head_dim = 0;
  int bits = 0;
  NormMode norm = NormMode::kNone;
  QjlMode qjl = QjlMode::kNone;
  int qjl_dim = 0;      ///< m: QJL bits per token (d for kSign, 0 for kNone)
  int page_tokens = 0;  ///< T
  int code_bytes = 0;   ///< per token: head_dim * bits / 8
  int qjl_bytes = 0;    ///< per token: qjl_dim / 8
  int codes_offset = 0;
  int norms_offset = 0;   ///< valid when norm == kToken
  int qjl_offset = 0;     ///< valid when qjl != kNone
  int rnorms_offset = 0;  ///< valid when qjl == kProd
  int page_bytes = 0;     ///< multiple of kRegionAlign
};

TURBOESM_HOST_DEVICE constexpr int align_up(int bytes, int align) {
  return (bytes + align - 1) / align * align;
}

/// \brief QJL bits per token actually stored: d for kSign, m for kProd (0 → d), 0 for kNone.
TURBOESM_HOST_DEVICE constexpr int effective_qjl_dim(int head_dim, QjlMode qjl, int qjl_dim) {
  return qjl == QjlMode::kNone   ? 0
         : qjl == QjlMode::kSign ? head_dim
                                 : (qjl_dim > 0 ? qjl_dim : head_dim);
}

/// \brief DESIGN "memory accounting": bytes per token per head, no page padding.
/// codes (d·bits/8) + fp16 norm (kToken) + m/8 QJL bytes + fp16 residual norm (kProd).
TURBOESM_HOST_DEVICE constexpr int bytes_per_token_per_head(int head_dim, int bits, NormMode norm,
                                                            QjlMode qjl, int qjl_dim = 0) {
  const int m = effective_qjl_dim(head_dim, qjl, qjl_dim);
  return head_dim * bits / 8 + (norm == NormMode::kToken ? 2 : 0) + m / 8 +
         (qjl == QjlMode::kProd ? 2 : 0);
}

/// \brief Storage bits per value (everything per token divided by head_dim).
TURBOESM_HOST_DEVICE constexpr double bits_per_value(int head_dim, int bits, NormMode norm,
                                                     QjlMode qjl, int qjl_dim = 0) {
  return 8.0 * bytes_per_token_per_head(head_dim, bits, norm, qjl, qjl_dim) / head_dim;
}

/// \brief Page layout for the given mode. Arguments must satisfy check_page_layout_args.
TURBOESM_HOST_DEVICE constexpr PageLayout make_page_layout(int head_dim, int bits, NormMode norm,
                                                           QjlMode qjl, int qjl_dim = 0,
                                                           int page_tokens = kPageTokens) {
  PageLayout l{};
  l.head_dim = head_dim;
  l.bits = bits;
  l.norm = norm;
  l.qjl = qjl;
  l.qjl_dim = effective_qjl_dim(head_dim, qjl, qjl_dim);
  l.page_tokens = page_tokens;
  l.code_bytes = head_dim * bits / 8;
  l.qjl_bytes = l.qjl_dim / 8;
  int off = 0;
  l.codes_offset = off;
  off = align_up(off + page_tokens * l.code_bytes, kRegionAlign);
  l.norms_offset = off;
  if (norm == NormMode::kToken) off = align_up(off + page_tokens * 2, kRegionAlign);
  l.qjl_offset = off;
  if (qjl != QjlMode::kNone) off = align_up(off + page_tokens * l.qjl_bytes, kRegionAlign);
  l.rnorms_offset = off;
  if (qjl == QjlMode::kProd) off = align_up(off + page_tokens * 2, kRegionAlign);
  l.page_bytes = off;
  return l;
}

/// \brief Throws turboesm::Error naming the first invalid argument of make_page_layout.
inline void check_page_layout_args(int head_dim, int bits, NormMode norm, QjlMode qjl,
                                   int qjl_dim = 0, int page_tokens = kPageTokens) {
  TURBOESM_CHECK(is_supported_bits(bits), "unsupported bits: ", bits, " (supported: 1, 2, 3, 4)");
  TURBOESM_CHECK(head_dim > 0 && head_dim % 8 == 0 && head_dim <= kMaxHeadDim,
                 "head_dim must be a positive multiple of 8 and at most ", kMaxHeadDim, ", got ",
                 head_dim);
  TURBOESM_CHECK(norm == NormMode::kNone || norm == NormMode::kToken, "invalid norm mode ",
                 static_cast<int>(norm));
  TURBOESM_CHECK(qjl == QjlMode::kNone || qjl == QjlMode::kSign || qjl == QjlMode::kProd,
                 "invalid qjl mode ", static_cast<int>(qjl));
  if (qjl == QjlMode::kProd)
    TURBOESM_CHECK(qjl_dim >= 0 && qjl_dim % 8 == 0 && qjl_dim <= 8 * kMaxHeadDim,
                   "qjl_dim (m) must be a multiple of 8 in [8, ", 8 * kMaxHeadDim,
                   "] (0 = head_dim), got ", qjl_dim);
  TURBOESM_CHECK(page_tokens > 0 && page_tokens % 8 == 0,
                 "page_tokens must be a positive multiple of 8, got ", page_tokens);
}

// Per-token accessors (host and device). `page` points at the first byte of a page.

/// Packed codes of token t: [code_bytes] bytes.
TURBOESM_HOST_DEVICE inline uint8_t* token_codes(uint8_t* page, const PageLayout& l, int t) {
  return page + l.codes_offset + t * l.code_bytes;
}
TURBOESM_HOST_DEVICE inline const uint8_t* token_codes(const uint8_t* page, const PageLayout& l,
                                                       int t) {
  return page + l.codes_offset + t * l.code_bytes;
}
/// fp16 bits of token t's norm (norm == kToken).
TURBOESM_HOST_DEVICE inline uint16_t* token_norm(uint8_t* page, const PageLayout& l, int t) {
  return reinterpret_cast<uint16_t*>(page + l.norms_offset) + t;
}
TURBOESM_HOST_DEVICE inline const uint16_t* token_norm(const uint8_t* page, const PageLayout& l,
                                                       int t) {
  return reinterpret_cast<const uint16_t*>(page + l.norms_offset) + t;
}
/// QJL sign bits of token t: [qjl_bytes] bytes, 1-bit bitpack layout, bit 1 = non-negative.
TURBOESM_HOST_DEVICE inline uint8_t* token_qjl(uint8_t* page, const PageLayout& l, int t) {
  return page + l.qjl_offset + t * l.qjl_bytes;
}
TURBOESM_HOST_DEVICE inline const uint8_t* token_qjl(const uint8_t* page, const PageLayout& l,
                                                     int t) {
  return page + l.qjl_offset + t * l.qjl_bytes;
}
/// fp16 bits of token t's residual norm ‖r‖ (qjl == kProd).
TURBOESM_HOST_DEVICE inline uint16_t* token_rnorm(uint8_t* page, const PageLayout& l, int t) {
  return reinterpret_cast<uint16_t*>(page + l.rnorms_offset) + t;
}
TURBOESM_HOST_DEVICE inline const uint16_t* token_rnorm(const uint8_t* page, const PageLayout& l,
                                                        int t) {
  return reinterpret_cast<const uint16_t*>(page + l.rnorms_offset) + t;
}

/// \brief "none" / "token".
inline const char* to_string(NormMode m) { return m == NormMode::kToken ? "token" : "none"; }
/// \brief "none" / "sign" / "prod".
inline const char* to_string(QjlMode m) {
  return m == QjlMode::kSign ? "sign" : m == QjlMode::kProd ? "prod" : "none";
}
/// \brief Parses "none" / "token"; throws naming the accepted values.
inline NormMode parse_norm_mode(const std::string& s) {
  if (s == "none") return NormMode::kNone;
  if (s == "token") return NormMode::kToken;
  TURBOESM_FAIL("unknown norm mode '", s, "' (expected: none, token)");
}
/// \brief Parses "none" / "sign" / "prod"; throws naming the accepted values.
inline QjlMode parse_qjl_mode(const std::string& s) {
  if (s == "none") return QjlMode::kNone;
  if (s == "sign") return QjlMode::kSign;
  if (s == "prod") return QjlMode::kProd;
  TURBOESM_FAIL("unknown qjl mode '", s, "' (expected: none, sign, prod)");
}

// Known sizes (the memory reports and the kernel rely on them).
static_assert(bytes_per_token_per_head(64, 3, NormMode::kNone, QjlMode::kNone) == 24,
              "d=64 3-bit codes: 8 codes in 3 bytes -> 24 B/token");
static_assert(bytes_per_token_per_head(64, 3, NormMode::kToken, QjlMode::kNone) == 26, "");
static_assert(bytes_per_token_per_head(64, 3, NormMode::kToken, QjlMode::kSign) == 34, "");
static_assert(bytes_per_token_per_head(64, 3, NormMode::kToken, QjlMode::kProd, 64) == 36, "");
static_assert(bytes_per_token_per_head(24, 3, NormMode::kNone, QjlMode::kNone) == 9, "");
static_assert(bytes_per_token_per_head(128, 4, NormMode::kToken, QjlMode::kProd) == 84, "");
static_assert(make_page_layout(64, 3, NormMode::kToken, QjlMode::kNone).page_bytes == 1536 + 128,
              "");
static_assert(make_page_layout(24, 3, NormMode::kToken, QjlMode::kProd).qjl_offset == 576 + 128,
              "");
static_assert(make_page_layout(24, 3, NormMode::kToken, QjlMode::kProd).page_bytes % kRegionAlign ==
                  0,
              "");
static_assert(make_page_layout(128, 4, NormMode::kToken, QjlMode::kProd).page_bytes ==
                  4096 + 128 + 1024 + 128,
              "");

}  // namespace turboesm::quant
