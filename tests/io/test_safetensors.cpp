// SPDX-License-Identifier: MIT
// Safetensors reader: valid files, every validation rule with a broken file, sharded checkpoints,
// and interoperability with the Python safetensors package when the venv is available.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#include "io_test_util.h"
#include "turboesm/io/safetensors.h"

namespace turboesm::io {
namespace {

using testing::error_of;
using ::testing::HasSubstr;
using testing::safetensors_bytes;
using testing::ScratchDir;
using testing::write_bytes;

std::string floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

// Two F32 tensors listed out of offset order, plus metadata.
const char* kValidHeader = R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},)"
                           R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                           R"("__metadata__":{"format":"pt"}})";

TEST(SafetensorsFile, ReadsValidFileZeroCopyInFileOrder) {
  ScratchDir dir;
  const std::string path = dir.file("ok.safetensors");
  write_bytes(path, safetensors_bytes(kValidHeader, floats({1, 2, 3, 4, 5})));
  SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "a");  // file order = offset order, not header order
  EXPECT_EQ(f.tensors()[1].name, "b");
  const TensorInfo& b = f.at("b");
  EXPECT_EQ(b.dtype, DType::F32);
  EXPECT_EQ(b.shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(b.numel(), 2);
  EXPECT_EQ(b.nbytes(), 8u);
  float v[2];
  std::memcpy(v, f.data(b), sizeof(v));
  EXPECT_EQ(v[0], 4.0f);
  EXPECT_EQ(v[1], 5.0f);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_THAT(error_of([&] { f.at("missing"); }), HasSubstr("tensor 'missing' not found"));
  EXPECT_THAT(error_of([&] { f.at("missing"); }), HasSubstr(path));
  // Movable: the moved-to object still serves the same mapping.
  SafetensorsFile g = std::move(f);
  EXPECT_EQ(g.at("a").nbytes(), 12u);
}

TEST(SafetensorsFile, AcceptsEmptyScalarAndZeroSizeTensors) {
  ScratchDir dir;
  const std::string path = dir.file("edge.safetensors");
  const std::string header =
      R"({"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("z":{"dtype":"F16","shape":[0,4],"data_offsets":[8,8]},)"
      R"("u":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}}   )";  // trailing padding spaces
  std::string data(11, '\0');
  data[0] = 42;
  write_bytes(path, safetensors_bytes(header, data));
  SafetensorsFile f(path);
  EXPECT_EQ(f.at("s").numel(), 1);
  EXPECT_EQ(f.at("z").numel(), 0);
  int64_t s;
  std::memcpy(&s, f.data(f.at("s")), 8);
  EXPECT_EQ(s, 42);

  write_bytes(path, safetensors_bytes("{}", ""));
  EXPECT_TRUE(SafetensorsFile(path).tensors().empty());
}

struct BrokenCase {
  const char* label;
  std::string bytes;
  const char* expected;  // substring of the error message
  SafetensorsLimits limits;
};

class SafetensorsBroken : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(SafetensorsBroken, IsRejectedWithClearError) {
  ScratchDir dir;
  const std::string path = dir.file("broken.safetensors");
  write_bytes(path, GetParam().bytes);
  const std::string msg = error_of([&] { SafetensorsFile f(path, GetParam().limits); });
  EXPECT_THAT(msg, HasSubstr(GetParam().expected));
  EXPECT_THAT(msg, HasSubstr(path));
}

std::string tensor(const char* name, const char* dtype, const char* shape, int b, int e) {
  return std::string("\"") + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
}
std::string header(std::initializer_list<std::string> entries) {
  std::string h = "{";
  for (const auto& e : entries) h += (h.size() > 1 ? "," : "") + e;
  return h + "}";
}
SafetensorsLimits limits_with(std::uint64_t header_bytes, std::size_t tensors, std::size_t rank) {
  SafetensorsLimits l;
  l.max_header_bytes = header_bytes;
  l.max_tensors = tensors;
  l.max_rank = rank;
  return l;
}

const std::string kTwoFloats = floats({1, 2});
const std::string kValid = safetensors_bytes(kValidHeader, floats({1, 2, 3, 4, 5}));

INSTANTIATE_TEST_SUITE_P(
    Cases, SafetensorsBroken,
    ::testing::Values(
        BrokenCase{"empty_file", "", "too small for a safetensors file", {}},
        BrokenCase{"shorter_than_length", "\x10\0\0", "too small", {}},
        BrokenCase{"header_longer_than_file",
                   safetensors_bytes(header({tensor("a", "F32", "[2]", 0, 8)}), kTwoFloats, 4096),
                   "exceeds the file size",
                   {}},
        BrokenCase{"header_length_cap",
                   safetensors_bytes(header({tensor("a", "F32", "[2]", 0, 8)}), kTwoFloats),
                   "exceeds the limit of 16 bytes", limits_with(16, 100, 8)},
        BrokenCase{"huge_header_length",
                   safetensors_bytes("{}", "", UINT64_MAX - 3),
                   "exceeds the limit",
                   {}},
        BrokenCase{"truncated_data", kValid.substr(0, kValid.size() - 3), "out of bounds", {}},
        BrokenCase{"malformed_json",
                   safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],)", kTwoFloats),
                   "malformed JSON header",
                   {}},
        BrokenCase{"not_an_object", safetensors_bytes("[1, 2]", ""), "must start with '{'", {}},
        BrokenCase{"invalid_utf8",
                   safetensors_bytes("{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[0],"
                                     "\"data_offsets\":[0,0]}}",
                                     ""),
                   "malformed JSON header",
                   {}},
        BrokenCase{"offsets_out_of_bounds",
                   safetensors_bytes(header({tensor("a", "F32", "[4]", 0, 16)}), kTwoFloats),
                   "out of bounds",
                   {}},
        BrokenCase{"overlapping_offsets",
                   safetensors_bytes(header({tensor("a", "F32", "[2]", 0, 8),
                                             tensor("b", "F32", "[2]", 4, 12)}),
                                     floats({1, 2, 3})),
                   "overlaps tensor 'a'",
                   {}},
        BrokenCase{"gap_between_tensors",
                   safetensors_bytes(header({tensor("a", "F32", "[1]", 0, 4),
                                             tensor("b", "F32", "[1]", 8, 12)}),
                                     floats({1, 2, 3})),
                   "gap of 4 bytes before tensor 'b'",
                   {}},
        BrokenCase{"trailing_data",
                   safetensors_bytes(header({tensor("a", "F32", "[1]", 0, 4)}), kTwoFloats),
                   "tensors cover 4 bytes",
                   {}},
        BrokenCase{"size_not_dtype_times_shape",
                   safetensors_bytes(header({tensor("a", "F16", "[2]", 0, 8)}), kTwoFloats),
                   "dtype F16 x shape [2] needs 4 bytes",
                   {}},
        BrokenCase{"end_before_begin",
                   safetensors_bytes(header({tensor("a", "F32", "[0]", 8, 4)}), kTwoFloats),
                   "end before begin",
                   {}},
        BrokenCase{"unknown_dtype",
                   safetensors_bytes(header({tensor("a", "F64", "[1]", 0, 8)}), kTwoFloats),
                   "unsupported dtype 'F64' (supported: F32, F16, BF16, I64, I32, U8)",
                   {}},
        BrokenCase{"too_many_tensors",
                   safetensors_bytes(header({tensor("a", "F32", "[1]", 0, 4),
                                             tensor("b", "F32", "[1]", 4, 8)}),
                                     kTwoFloats),
                   "2 tensors, more than the limit of 1", limits_with(1 << 20, 1, 8)},
        BrokenCase{"rank_too_large",
                   safetensors_bytes(header({tensor("a", "F32", "[1,1,1,1,1,1,1,1,1]", 0, 4)}),
                                     floats({1})),
                   "rank 9, more than the limit of 8",
                   {}},
        BrokenCase{"negative_dim",
                   safetensors_bytes(header({tensor("a", "F32", "[-1,2]", 0, 8)}), kTwoFloats),
                   "negative dimension",
                   {}},
        BrokenCase{"fractional_dim",
                   safetensors_bytes(header({tensor("a", "F32", "[1.5]", 0, 8)}), kTwoFloats),
                   "must be integers",
                   {}},
        BrokenCase{
            "shape_overflow",
            safetensors_bytes(header({tensor("a", "F32",
                                             "[4611686018427387904,4611686018427387904]", 0, 8)}),
                              kTwoFloats),
            "overflows 64-bit sizes",
            {}},
        BrokenCase{"negative_offset",
                   safetensors_bytes(header({tensor("a", "F32", "[2]", -8, 0)}), kTwoFloats),
                   "data_offsets must be non-negative integers",
                   {}},
        BrokenCase{"missing_dtype",
                   safetensors_bytes(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", kTwoFloats),
                   "missing or non-string 'dtype'",
                   {}},
        BrokenCase{"duplicate_tensor",
                   safetensors_bytes(header({tensor("a", "F32", "[1]", 0, 4),
                                             tensor("a", "F32", "[1]", 4, 8)}),
                                     kTwoFloats),
                   "lists tensor 'a' twice",
                   {}},
        BrokenCase{"metadata_not_strings",
                   safetensors_bytes(R"({"__metadata__":{"n":3}})", ""),
                   "__metadata__ value of 'n' must be a string",
                   {}}),
    [](const ::testing::TestParamInfo<BrokenCase>& info) { return info.param.label; });

TEST(SafetensorsFile, MissingFileNamesPath) {
  EXPECT_THAT(error_of([] { SafetensorsFile f("/nonexistent/x.safetensors"); }),
              HasSubstr("cannot open /nonexistent/x.safetensors"));
}

// --------------------------------------------------------------------------------------------
// Checkpoints
// --------------------------------------------------------------------------------------------

void write_shard(const std::string& path, const std::vector<std::pair<std::string, float>>& ts) {
  std::vector<TensorView> views;
  std::vector<float> values;
  values.reserve(ts.size());
  for (const auto& [name, v] : ts) values.push_back(v);
  for (std::size_t i = 0; i < ts.size(); ++i) {
    views.push_back({ts[i].first, DType::F32, {1}, &values[i]});
  }
  write_safetensors(path, views);
}

float value_of(const SafetensorsCheckpoint& c, const std::string& name) {
  float v;
  std::memcpy(&v, c.data(name), 4);
  return v;
}

TEST(SafetensorsCheckpoint, OpensSingleFileDirectoryAndPath) {
  ScratchDir dir;
  write_shard(dir.file("model.safetensors"), {{"esm.x", 1.0f}, {"esm.a", 2.0f}});
  for (const std::string& p : {dir.path().string(), dir.file("model.safetensors")}) {
    const auto c = SafetensorsCheckpoint::open(p);
    EXPECT_EQ(c.names(), (std::vector<std::string>{"esm.a", "esm.x"}));
    EXPECT_EQ(value_of(c, "esm.x"), 1.0f);
    EXPECT_EQ(c.file_of("esm.a").path(), dir.file("model.safetensors"));
    EXPECT_EQ(c.total_bytes(), 8u);
    EXPECT_EQ(c.find("nope"), nullptr);
    EXPECT_THAT(error_of([&] { c.data("nope"); }), HasSubstr("tensor 'nope' not found"));
  }
}

void write_index(const std::string& path, const std::string& weight_map) {
  write_bytes(path, R"({"metadata":{"total_size":12},"weight_map":)" + weight_map + "}");
}

TEST(SafetensorsCheckpoint, OpensShardedCheckpoint) {
  ScratchDir dir;
  write_shard(dir.file("model-00001-of-00002.safetensors"), {{"a", 1.0f}, {"b", 2.0f}});
  write_shard(dir.file("model-00002-of-00002.safetensors"), {{"c", 3.0f}});
  write_index(dir.file("model.safetensors.index.json"),
              R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
              R"("c":"model-00002-of-00002.safetensors"})");
  const auto c = SafetensorsCheckpoint::open(dir.path().string());
  EXPECT_EQ(c.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.files().size(), 2u);
  EXPECT_EQ(value_of(c, "a"), 1.0f);
  EXPECT_EQ(value_of(c, "c"), 3.0f);
  EXPECT_EQ(c.file_of("c").path(), dir.file("model-00002-of-00002.safetensors"));
  // The index file itself can be given too.
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.file("model.safetensors.index.json")).names().size(),
            3u);
}

TEST(SafetensorsCheckpoint, IndexPointingAtMissingShard) {
  ScratchDir dir;
  write_shard(dir.file("s1.safetensors"), {{"a", 1.0f}});
  write_index(dir.file("model.safetensors.index.json"),
              R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); }),
              HasSubstr("lists shard 's2.safetensors', which does not exist"));
}

TEST(SafetensorsCheckpoint, TensorListedInIndexButAbsentFromShard) {
  ScratchDir dir;
  write_shard(dir.file("s1.safetensors"), {{"a", 1.0f}});
  write_shard(dir.file("s2.safetensors"), {{"c", 1.0f}});
  write_index(dir.file("model.safetensors.index.json"),
              R"({"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"})");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); }),
              HasSubstr("lists tensor 'b' in shard 's1.safetensors', but that shard does not"));
}

TEST(SafetensorsCheckpoint, TensorInTwoShards) {
  ScratchDir dir;
  write_shard(dir.file("s1.safetensors"), {{"a", 1.0f}});
  write_shard(dir.file("s2.safetensors"), {{"a", 2.0f}, {"b", 1.0f}});
  write_index(dir.file("model.safetensors.index.json"),
              R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); }),
              HasSubstr("tensor 'a' is stored in both"));
}

TEST(SafetensorsCheckpoint, RejectsBadIndexAndUnsupportedInputs) {
  ScratchDir dir;
  write_index(dir.file("model.safetensors.index.json"), R"({"a":"../etc/passwd"})");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); }),
              HasSubstr("must be a plain file name"));
  write_bytes(dir.file("model.safetensors.index.json"), "{not json");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); }),
              HasSubstr("malformed JSON"));
  write_bytes(dir.file("model.safetensors.index.json"), R"({"metadata":{}})");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(dir.path().string()); }),
              HasSubstr("'weight_map'"));

  ScratchDir empty;
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(empty.path().string()); }),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
  write_bytes(empty.file("pytorch_model.bin"), "pickle");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(empty.path().string()); }),
              HasSubstr("safetensors only"));
  write_bytes(empty.file("esm2_t6_8M_UR50D.pt"), "pickle");
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(empty.file("esm2_t6_8M_UR50D.pt")); }),
              HasSubstr("fair-esm .pt"));
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint::open(empty.file("nothing")); }),
              HasSubstr("no such file or directory"));
}

// --------------------------------------------------------------------------------------------
// Interoperability with the reference implementation (Python safetensors), when available.
// --------------------------------------------------------------------------------------------

TEST(SafetensorsInterop, PythonReadsOursAndWeReadPythons) {
  const std::string py = TURBOESM_PYTHON;
  if (py.empty()) GTEST_SKIP() << "TURBOESM_PYTHON not configured";
  ScratchDir dir;
  // Python writes (F32, F16, BF16, I64, I32), we read.
  const std::string theirs = dir.file("theirs.safetensors");
  const std::string script = dir.file("interop.py");
  write_bytes(script, R"PY(
import sys, torch
from safetensors.torch import save_file, load_file
mode, path = sys.argv[1], sys.argv[2]
if mode == "write":
    save_file({"f32": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4,
               "f16": torch.tensor([1.5, -2.0], dtype=torch.float16),
               "bf16": torch.tensor([0.5], dtype=torch.bfloat16),
               "i64": torch.tensor([-7, 1 << 40], dtype=torch.int64),
               "i32": torch.tensor([3], dtype=torch.int32)}, path, metadata={"k": "v"})
else:
    t = load_file(path)
    assert t["x"].dtype == torch.float32 and list(t["x"].shape) == [2, 2], t["x"]
    assert t["x"].flatten().tolist() == [1.0, 2.0, 3.0, 4.0], t["x"]
    assert t["ids"].dtype == torch.int64 and t["ids"].tolist() == [5, 6, 7], t["ids"]
    assert t["empty"].shape == (0, 3)
)PY");
  ASSERT_EQ(std::system((py + " " + script + " write " + theirs).c_str()), 0);
  SafetensorsFile f(theirs);
  EXPECT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.metadata().at("k"), "v");
  EXPECT_EQ(f.data_offset() % 8, 0u);
  float f32[6];
  std::memcpy(f32, f.data(f.at("f32")), sizeof(f32));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f32[i], i / 4.0f);
  EXPECT_EQ(f.at("f32").shape, (std::vector<int64_t>{2, 3}));
  std::uint16_t h[2];
  std::memcpy(h, f.data(f.at("f16")), sizeof(h));
  EXPECT_EQ(h[0], 0x3e00);  // 1.5 in IEEE half
  EXPECT_EQ(h[1], 0xc000);  // -2.0
  std::uint16_t bf;
  std::memcpy(&bf, f.data(f.at("bf16")), 2);
  EXPECT_EQ(bf, 0x3f00);  // 0.5 in bfloat16
  int64_t i64[2];
  std::memcpy(i64, f.data(f.at("i64")), sizeof(i64));
  EXPECT_EQ(i64[0], -7);
  EXPECT_EQ(i64[1], int64_t{1} << 40);
  EXPECT_EQ(f.at("i32").dtype, DType::I32);

  // We write, Python reads.
  const std::string ours = dir.file("ours.safetensors");
  const float x[4] = {1, 2, 3, 4};
  const int64_t ids[3] = {5, 6, 7};
  write_safetensors(ours, {{"x", DType::F32, {2, 2}, x},
                           {"ids", DType::I64, {3}, ids},
                           {"empty", DType::F16, {0, 3}, nullptr}});
  EXPECT_EQ(std::system((py + " " + script + " read " + ours).c_str()), 0);
}

}  // namespace
}  // namespace turboesm::io
