// check_onnx_graph, as dgs_sdk/onnx_graph.py: the ONNX bytes are read without a schema library, by field number
// (onnx.proto), with the semantics Python's protobuf (upb) gives them, so that a graph Python refuses is refused
// here too:
// - every message any known field holds is parsed, each occurrence within its own length, at most 100 levels deep
//   (upb's limit), packed scalars checked; a known field of another wire type is an unknown field, kept unparsed;
// - a singular message field that occurs twice is the merge of its occurrences (their fields in turn), a oneof
//   member only counts from the last occurrence of another member on, a scalar takes its last value, and a closed
//   enum (TensorProto.data_location) ignores values it does not define.
// The bytes are read in place (google::protobuf::io::CodedInputStream over views), never copied: a model can
// be gigabytes.
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"
#include "dgs/package.hpp"
#include "strict_json.hpp"

namespace dgs {
namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::internal::WireFormatLite;

// The messages of onnx.proto.
enum class T {
  none, model, graph, node, attribute, tensor, segment, sparse, value_info, type, type_tensor, type_sequence,
  type_map, type_optional, type_sparse, type_opaque, shape, dim, opset, string_string, annotation, training,
  function, node_device, sharding, int_int_list, sharded_dim, simple_sharded, device_config,
};

enum Kind : char { message = 'm', varint = 'v', fixed32 = 'f', fixed64 = 'd', bytes = 's' };

struct Field {
  int number;
  Kind kind;
  bool repeated;
  T type;  // of a message field
};

// The fields whose wire type or content matters: messages (parsed), and repeated numbers (packed or not).
// Strings, bytes and singular numbers need no check beyond the wire format.
std::vector<Field> fields_of(T t) {
  const bool R = true, S = false;
  switch (t) {
    case T::model:
      return {{1, varint, S, T::none}, {8, message, R, T::opset}, {7, message, S, T::graph},
              {14, message, R, T::string_string}, {20, message, R, T::training}, {25, message, R, T::function},
              {26, message, R, T::device_config}};
    case T::graph:
      return {{1, message, R, T::node}, {5, message, R, T::tensor}, {15, message, R, T::sparse},
              {11, message, R, T::value_info}, {12, message, R, T::value_info}, {13, message, R, T::value_info},
              {14, message, R, T::annotation}, {16, message, R, T::string_string}};
    case T::node:
      return {{5, message, R, T::attribute}, {9, message, R, T::string_string}, {10, message, R, T::node_device}};
    case T::attribute:
      return {{20, varint, S, T::none}, {2, fixed32, S, T::none}, {3, varint, S, T::none},
              {5, message, S, T::tensor}, {6, message, S, T::graph}, {22, message, S, T::sparse},
              {14, message, S, T::type}, {7, fixed32, R, T::none}, {8, varint, R, T::none},
              {10, message, R, T::tensor}, {11, message, R, T::graph}, {23, message, R, T::sparse},
              {15, message, R, T::type}};
    case T::tensor:
      return {{1, varint, R, T::none}, {2, varint, S, T::none}, {3, message, S, T::segment},
              {4, fixed32, R, T::none}, {5, varint, R, T::none}, {7, varint, R, T::none},
              {13, message, R, T::string_string}, {14, varint, S, T::none}, {10, fixed64, R, T::none},
              {11, varint, R, T::none}, {16, message, R, T::string_string}};
    case T::segment: return {{1, varint, S, T::none}, {2, varint, S, T::none}};
    case T::sparse: return {{1, message, S, T::tensor}, {2, message, S, T::tensor}, {3, varint, R, T::none}};
    case T::value_info: return {{2, message, S, T::type}, {4, message, R, T::string_string}};
    case T::type:
      return {{1, message, S, T::type_tensor}, {4, message, S, T::type_sequence}, {5, message, S, T::type_map},
              {9, message, S, T::type_optional}, {8, message, S, T::type_sparse}, {7, message, S, T::type_opaque}};
    case T::type_tensor:
    case T::type_sparse: return {{1, varint, S, T::none}, {2, message, S, T::shape}};
    case T::type_sequence:
    case T::type_optional: return {{1, message, S, T::type}};
    case T::type_map: return {{1, varint, S, T::none}, {2, message, S, T::type}};
    case T::shape: return {{1, message, R, T::dim}};
    case T::dim: return {{1, varint, S, T::none}};
    case T::opset: return {{2, varint, S, T::none}};
    case T::annotation: return {{2, message, R, T::string_string}};
    case T::training:
      return {{1, message, S, T::graph}, {2, message, S, T::graph}, {3, message, R, T::string_string},
              {4, message, R, T::string_string}};
    case T::function:
      return {{11, message, R, T::attribute}, {7, message, R, T::node}, {9, message, R, T::opset},
              {12, message, R, T::value_info}, {14, message, R, T::string_string}};
    case T::node_device: return {{2, message, R, T::sharding}, {3, varint, S, T::none}};
    case T::sharding:
      return {{2, varint, R, T::none}, {3, message, R, T::int_int_list}, {4, message, R, T::sharded_dim}};
    case T::int_int_list: return {{1, varint, S, T::none}, {2, varint, R, T::none}};
    case T::sharded_dim: return {{1, varint, S, T::none}, {2, message, R, T::simple_sharded}};
    case T::simple_sharded: return {{1, varint, S, T::none}, {3, varint, S, T::none}};
    case T::device_config: return {{2, varint, S, T::none}};
    default: return {};
  }
}

const std::vector<Field>& schema(T t) {
  static std::vector<std::vector<Field>> all = [] {
    std::vector<std::vector<Field>> table;
    for (int i = 0; i <= static_cast<int>(T::device_config); ++i) table.push_back(fields_of(static_cast<T>(i)));
    return table;
  }();
  return all[static_cast<int>(t)];
}

const Field* find_field(T t, int number) {
  for (const Field& field : schema(t)) {
    if (field.number == number) return &field;
  }
  return nullptr;
}

// The wire type a kind is written with (repeated numbers may also come packed, length-delimited).
int wire_of(Kind kind) {
  switch (kind) {
    case varint: return WireFormatLite::WIRETYPE_VARINT;
    case fixed32: return WireFormatLite::WIRETYPE_FIXED32;
    case fixed64: return WireFormatLite::WIRETYPE_FIXED64;
    default: return WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
  }
}

struct Wire {
  int number;
  int wire;
  std::uint64_t value;     // varint or fixed
  std::string_view data;   // length-delimited payload
};

// Fields one message may have. Each decoded field takes 32 bytes here where its encoding can take 2, so without a
// bound a 2 GiB member of empty fields would take 32 GiB before any other check; exporters write tensors' numbers
// packed (one field), so real graphs stay far below it (a ViT-L-14 has under 100,000 fields in all).
constexpr std::size_t max_fields_per_message = std::size_t{1} << 22;

struct TooManyFields {};

// The fields of one encoded message, in order; false when the bytes are not a message. Throws TooManyFields past
// max_fields_per_message.
bool decode(std::string_view bytes, std::vector<Wire>& out) {
  out.clear();
  if (bytes.size() > static_cast<std::size_t>(INT_MAX)) return false;
  const auto* start = reinterpret_cast<const std::uint8_t*>(bytes.data());
  CodedInputStream in(start, static_cast<int>(bytes.size()));
  for (;;) {
    int before = in.CurrentPosition();
    std::uint32_t tag = in.ReadTag();
    if (tag == 0) return before == static_cast<int>(bytes.size());  // the end, or a tag of 0 (refused)
    int number = static_cast<int>(WireFormatLite::GetTagFieldNumber(tag));
    int wire = WireFormatLite::GetTagWireType(tag);
    if (number == 0) return false;
    Wire field{number, wire, 0, {}};
    switch (wire) {
      case WireFormatLite::WIRETYPE_VARINT:
        if (!in.ReadVarint64(&field.value)) return false;
        break;
      case WireFormatLite::WIRETYPE_FIXED64:
        if (!in.ReadLittleEndian64(&field.value)) return false;
        break;
      case WireFormatLite::WIRETYPE_FIXED32: {
        std::uint32_t value = 0;
        if (!in.ReadLittleEndian32(&value)) return false;
        field.value = value;
        break;
      }
      case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: {
        std::uint32_t length = 0;
        if (!in.ReadVarint32(&length) || length > static_cast<std::uint32_t>(INT_MAX)) return false;
        int at = in.CurrentPosition();
        if (!in.Skip(static_cast<int>(length))) return false;
        field.data = bytes.substr(static_cast<std::size_t>(at), length);
        break;
      }
      case WireFormatLite::WIRETYPE_START_GROUP:
        if (!WireFormatLite::SkipField(&in, tag)) return false;
        continue;  // an unknown group: no known field of onnx.proto is one
      default:
        return false;  // an end-group without its start, or wire types 6 and 7
    }
    if (out.size() == max_fields_per_message) throw TooManyFields{};
    out.push_back(field);
  }
}

// A packed run of numbers: whole varints, or a whole number of fixed-size values.
bool packed_ok(std::string_view data, Kind kind) {
  if (kind == fixed32) return data.size() % 4 == 0;
  if (kind == fixed64) return data.size() % 8 == 0;
  if (data.size() > static_cast<std::size_t>(INT_MAX)) return false;
  CodedInputStream in(reinterpret_cast<const std::uint8_t*>(data.data()), static_cast<int>(data.size()));
  std::uint64_t value = 0;
  while (in.CurrentPosition() < static_cast<int>(data.size())) {
    if (!in.ReadVarint64(&value)) return false;
  }
  return true;
}

// upb's depth limit as Python's protobuf sets it: the model, then at most 100 levels of messages within.
constexpr int max_message_depth = 100;

// Whether every message in the model parses as Python's protobuf would parse it.
bool parses(std::string_view model) {
  struct Item {
    T type;
    std::string_view bytes;
    int depth;
  };
  std::vector<Item> stack{{T::model, model, 0}};
  std::vector<Wire> wires;
  while (!stack.empty()) {
    Item item = stack.back();
    stack.pop_back();
    if (!decode(item.bytes, wires)) return false;
    for (const Wire& w : wires) {
      const Field* field = find_field(item.type, w.number);
      if (!field) continue;
      if (field->kind == message && w.wire == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
        if (item.depth + 1 > max_message_depth) return false;
        stack.push_back({field->type, w.data, item.depth + 1});
      } else if (field->repeated && field->kind != message && field->kind != bytes &&
                 w.wire == WireFormatLite::WIRETYPE_LENGTH_DELIMITED && !packed_ok(w.data, field->kind)) {
        return false;
      }
    }
  }
  return true;
}

// One message as protobuf holds it after parsing: its occurrences merged (a list of encoded segments).
struct Message {
  T type = T::none;
  std::vector<std::string_view> segments;
};

// The fields of a merged message, in order (the bytes were checked by parses()).
std::vector<Wire> all_fields(const Message& m) {
  std::vector<Wire> out, one;
  for (std::string_view segment : m.segments) {
    decode(segment, one);
    out.insert(out.end(), one.begin(), one.end());
  }
  return out;
}

// The members of a oneof, by message type: a field of the group set later clears the others.
std::vector<int> oneof_of(T t, int number) {
  if (t == T::type) {
    static const std::vector<int> value{1, 4, 5, 9, 8, 7};
    for (int n : value) {
      if (n == number) return value;
    }
  }
  if (t == T::dim && (number == 1 || number == 2)) return {1, 2};
  return {};
}

// Field `number` of `m` where it is set and of its proper wire type: from the last occurrence of another
// member of its oneof on.
std::vector<Wire> occurrences(const std::vector<Wire>& fields, T type, int number, int wire) {
  std::vector<int> group = oneof_of(type, number);
  std::size_t from = 0;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const Wire& w = fields[i];
    if (w.number == number || std::find(group.begin(), group.end(), w.number) == group.end()) continue;
    const Field* other = find_field(type, w.number);
    int other_wire = other ? wire_of(other->kind) : -1;
    if (other && w.wire == other_wire) from = i + 1;  // a set member of the same oneof clears this one
    if (type == T::dim && w.number == 2 && w.wire == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) from = i + 1;
  }
  std::vector<Wire> out;
  for (std::size_t i = from; i < fields.size(); ++i) {
    if (fields[i].number == number && fields[i].wire == wire) out.push_back(fields[i]);
  }
  return out;
}

// A singular message field (merged), or nothing when it is not set.
bool sub_message(const std::vector<Wire>& fields, T type, int number, Message& out) {
  const Field* field = find_field(type, number);
  out = Message{field ? field->type : T::none, {}};
  for (const Wire& w : occurrences(fields, type, number, WireFormatLite::WIRETYPE_LENGTH_DELIMITED)) {
    out.segments.push_back(w.data);
  }
  return !out.segments.empty();
}

std::vector<Message> repeated_messages(const std::vector<Wire>& fields, T type, int number) {
  const Field* field = find_field(type, number);
  std::vector<Message> out;
  for (const Wire& w : fields) {
    if (w.number == number && w.wire == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) out.push_back({field->type, {w.data}});
  }
  return out;
}

// A string field: its last value ("" when unset).
std::string last_string(const std::vector<Wire>& fields, T type, int number) {
  auto found = occurrences(fields, type, number, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  return found.empty() ? std::string() : std::string(found.back().data);
}

// A varint field's last value, as protobuf reads an int32 (its low 32 bits); `has` tells whether it is set.
std::int64_t last_varint(const std::vector<Wire>& fields, T type, int number, bool* has = nullptr) {
  auto found = occurrences(fields, type, number, WireFormatLite::WIRETYPE_VARINT);
  if (has) *has = !found.empty();
  return found.empty() ? 0 : static_cast<std::int64_t>(found.back().value);
}

std::string names_repr(const std::vector<std::string>& names) {
  std::string out = "[";
  for (std::size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + json::repr_string(names[i]);
  return out + "]";
}

// _external_tensors: the first tensor with external data in Python's walk (every set message field, in field
// number order, pushed on a stack; the last pushed is looked at first). Returns false when there is none.
bool external_tensor(const Message& model, std::string& name, std::string& location) {
  std::vector<Message> stack{model};
  while (!stack.empty()) {
    Message m = std::move(stack.back());
    stack.pop_back();
    std::vector<Wire> fields = all_fields(m);
    if (m.type == T::tensor) {
      // data_location is a closed enum: values other than DEFAULT (0) and EXTERNAL (1) are not taken.
      std::int64_t where = 0;
      for (const Wire& w : fields) {
        if (w.number == 14 && w.wire == WireFormatLite::WIRETYPE_VARINT) {
          auto value = static_cast<std::int32_t>(w.value);
          if (value == 0 || value == 1) where = value;
        }
      }
      std::vector<Message> entries = repeated_messages(fields, T::tensor, 13);
      if (where == 1 || !entries.empty()) {
        name = last_string(fields, T::tensor, 8);
        location = "?";
        for (const Message& entry : entries) {
          std::vector<Wire> kv = all_fields(entry);
          if (last_string(kv, T::string_string, 1) == "location") {
            location = last_string(kv, T::string_string, 2);
            break;
          }
        }
        return true;
      }
      continue;
    }
    std::vector<Field> message_fields;
    for (const Field& field : schema(m.type)) {
      if (field.kind == message) message_fields.push_back(field);
    }
    std::sort(message_fields.begin(), message_fields.end(),
              [](const Field& a, const Field& b) { return a.number < b.number; });
    for (const Field& field : message_fields) {
      if (field.repeated) {
        for (Message& child : repeated_messages(fields, m.type, field.number)) stack.push_back(std::move(child));
      } else {
        Message child;
        if (sub_message(fields, m.type, field.number, child)) stack.push_back(std::move(child));
      }
    }
  }
  return false;
}

// A declared dimension: a value, a symbolic name, or unnamed.
struct Dim {
  enum { value, param, unnamed } kind = unnamed;
  std::int64_t number = 0;
  std::string name;
  std::string shown() const { return kind == value ? std::to_string(number) : kind == param ? name : "?"; }
};

struct Declared {
  std::int32_t elem_type = 0;
  bool has_shape = false;
  std::vector<Dim> dims;
};

// _dims and the element type of a ValueInfoProto's tensor type.
Declared declared(const Message& value_info) {
  Declared out;
  Message type, tensor, shape;
  if (!sub_message(all_fields(value_info), T::value_info, 2, type)) return out;
  if (!sub_message(all_fields(type), T::type, 1, tensor)) return out;
  std::vector<Wire> tensor_fields = all_fields(tensor);
  out.elem_type = static_cast<std::int32_t>(last_varint(tensor_fields, T::type_tensor, 1));
  out.has_shape = sub_message(tensor_fields, T::type_tensor, 2, shape);
  if (!out.has_shape) return out;
  for (const Message& dim : repeated_messages(all_fields(shape), T::shape, 1)) {
    std::vector<Wire> fields = all_fields(dim);
    Dim d;
    bool has_value = false;
    std::int64_t value = last_varint(fields, T::dim, 1, &has_value);
    std::string param = last_string(fields, T::dim, 2);
    if (has_value) {
      d.kind = Dim::value;
      d.number = value;
    } else if (!param.empty()) {
      d.kind = Dim::param;
      d.name = param;
    }
    out.dims.push_back(d);
  }
  return out;
}

// onnx.TensorProto.DataType.Name.
std::string type_name(std::int32_t type) {
  static const char* const names[] = {"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64",
                                      "STRING", "BOOL", "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64",
                                      "COMPLEX128", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                      "FLOAT8E5M2FNUZ", "UINT4", "INT4", "FLOAT4E2M1", "FLOAT8E8M0", "UINT2",
                                      "INT2"};
  if (type >= 0 && type < static_cast<std::int32_t>(sizeof names / sizeof *names)) return names[type];
  return std::to_string(type);
}

}  // namespace

GraphInterface check_onnx_graph(const std::vector<std::uint8_t>& model_bytes, const std::string& input_name,
                                const std::string& output_name, int size, const std::string& where) {
  auto fail = [&](const std::string& message) { return Error(Status::model_package, where + ": " + message); };
  std::string_view bytes(reinterpret_cast<const char*>(model_bytes.data()), model_bytes.size());
  bool parsed = false;
  try {
    parsed = parses(bytes);
  } catch (const TooManyFields&) {
    throw fail("has a protobuf message of more than " + json::group_digits(max_fields_per_message) +
               " fields; refused (it would take too much memory to check)");
  }
  if (!parsed) throw fail("is not an ONNX model (Error parsing message with type 'onnx.ModelProto')");
  Message model{T::model, {bytes}};
  std::string tensor, location;
  if (external_tensor(model, tensor, location)) {
    throw fail("tensor " + json::repr_string(tensor) + " refers to external data (" + json::repr_string(location) +
               "); a model package must hold all of its weights, so the graph is refused before any runtime reads it");
  }
  std::vector<Wire> model_fields = all_fields(model);
  std::vector<Message> functions = repeated_messages(model_fields, T::model, 25);
  if (!functions.empty()) {
    throw fail("the graph defines local functions (" +
               json::repr_string(last_string(all_fields(functions.front()), T::function, 1)) +
               ", ...); a dgs model is made of standard ONNX operators");
  }
  Message graph;
  sub_message(model_fields, T::model, 7, graph);
  graph.type = T::graph;
  std::vector<Wire> graph_fields = all_fields(graph);
  std::vector<Message> nodes = repeated_messages(graph_fields, T::graph, 1);
  if (static_cast<std::int64_t>(nodes.size()) > limits::max_graph_nodes) {
    throw fail("the graph has " + json::group_digits(static_cast<long long>(nodes.size())) + " nodes (at most " +
               json::group_digits(limits::max_graph_nodes) + ")");
  }
  for (const Message& node : nodes) {
    std::vector<Wire> fields = all_fields(node);
    std::string name = last_string(fields, T::node, 3), op = last_string(fields, T::node, 4);
    std::string domain = last_string(fields, T::node, 7);
    if (domain != "" && domain != "ai.onnx") {
      throw fail("node " + json::repr_string(name) + " uses operator " + json::repr_string(op) + " of domain " +
                 json::repr_string(domain) + "; a dgs model is made of standard ONNX operators");
    }
    if (op == "Loop" || op == "Scan" || op == "If" || op == "SequenceMap") {
      throw fail("node " + json::repr_string(name) + " is a " + op +
                 "; a dgs model is a feed-forward network, without loops or branches");
    }
  }
  std::vector<std::string> initializers;
  for (const Message& t : repeated_messages(graph_fields, T::graph, 5)) {
    initializers.push_back(last_string(all_fields(t), T::tensor, 8));
  }
  std::vector<Message> inputs;
  std::vector<std::string> input_names;
  for (Message& input : repeated_messages(graph_fields, T::graph, 11)) {
    std::string name = last_string(all_fields(input), T::value_info, 1);
    if (std::find(initializers.begin(), initializers.end(), name) != initializers.end()) continue;
    input_names.push_back(name);
    inputs.push_back(std::move(input));
  }
  std::string expected = "[B, 3, " + std::to_string(size) + ", " + std::to_string(size) + "] float32";
  if (input_names != std::vector<std::string>{input_name}) {
    throw fail("the graph's inputs are " + names_repr(input_names) + ", but the manifest describes one input " +
               json::repr_string(input_name) + " (" + expected + ")");
  }
  constexpr std::int32_t float32 = 1;
  Declared image = declared(inputs.front());
  auto is = [](const Dim& d, std::int64_t v) { return d.kind == Dim::value && d.number == v; };
  if (image.elem_type != float32 || !image.has_shape || image.dims.size() != 4 || !is(image.dims[1], 3) ||
      !is(image.dims[2], size) || !is(image.dims[3], size)) {
    std::string shape = "undeclared";
    if (image.has_shape) {
      shape = "[";
      for (std::size_t i = 0; i < image.dims.size(); ++i) shape += (i ? ", " : "") + image.dims[i].shown();
      shape += "]";
    }
    throw fail("input " + json::repr_string(input_name) + " has shape " + shape + " of type " +
               type_name(image.elem_type) + ", but the manifest's preprocessing gives " + expected);
  }
  GraphInterface result;
  if (image.dims[0].kind == Dim::value && image.dims[0].number > 0) result.batch = image.dims[0].number;
  std::int64_t per_image = 12LL * size * size;
  if (result.batch && *result.batch > limits::max_batch_bytes / per_image) {
    throw fail("a fixed batch of " + std::to_string(*result.batch) + " images of " + std::to_string(size) + " x " +
               std::to_string(size) + " takes more than " + json::group_digits(limits::max_batch_bytes) +
               " bytes a run");
  }
  // Python keeps the last output of a name (a dict of the outputs).
  std::vector<std::string> output_names;
  const Message* output = nullptr;
  std::vector<Message> outputs = repeated_messages(graph_fields, T::graph, 12);
  for (const Message& o : outputs) {
    std::string name = last_string(all_fields(o), T::value_info, 1);
    if (std::find(output_names.begin(), output_names.end(), name) == output_names.end()) output_names.push_back(name);
    if (name == output_name) output = &o;
  }
  if (!output) {
    std::string listed;
    for (std::size_t i = 0; i < output_names.size(); ++i) listed += (i ? ", " : "") + output_names[i];
    throw fail("the graph has no output " + json::repr_string(output_name) + " (outputs: " + listed + ")");
  }
  Declared out = declared(*output);
  // A fixed output length must be the fixed batch; with a dynamic batch it must not be fixed at all.
  bool fits = out.has_shape && out.dims.size() == 1 &&
              (out.dims[0].kind != Dim::value || (result.batch && out.dims[0].number == *result.batch));
  if (out.elem_type != float32 || !fits) {
    std::string shape = "undeclared";
    if (out.has_shape) {
      shape = "[";
      for (std::size_t i = 0; i < out.dims.size(); ++i) {
        const Dim& d = out.dims[i];
        shape += (i ? ", " : "") + (d.kind == Dim::value ? d.shown() : json::repr_string(d.kind == Dim::param ? d.name : "?"));
      }
      shape += "]";
    }
    throw fail("output " + json::repr_string(output_name) + " has shape " + shape +
               ", but a dgs model gives one float32 logit per image: [B] for an input of [B, 3, " +
               std::to_string(size) + ", " + std::to_string(size) + "]");
  }
  return result;
}

}  // namespace dgs
