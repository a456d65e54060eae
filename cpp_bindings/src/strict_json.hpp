// Strict JSON for manifests, read as dgs_sdk.package._strict_json reads them with Python's json module: UTF-8
// without a byte-order mark, no duplicate keys in any object, bounded nesting; NaN, Infinity and -Infinity
// tokens and out-of-range numbers parse (so that the field holding one is named by its check), and integers of
// any size are integers. Values are nlohmann::ordered_json (objects keep their order, as Python's dicts do); an
// integer beyond 64 bits is held as a tagged binary value, which no JSON text can produce otherwise.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace dgs::json {

using Json = nlohmann::ordered_json;

// Python refuses a manifest nested deeper than its recursion limit allows (about 990 levels, less the caller's
// stack); this fixed bound lies below that wherever the SDK is called from.
inline constexpr int max_depth = 512;

// A JSON text that is not valid, with the reason as Python's json module would give one (ValueError).
class Invalid : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses `text`; throws Invalid ("duplicate keys ['a']", "nested too deeply", "not UTF-8 (...)", a syntax error).
Json parse(const std::string& text);

// An integer too large for 64 bits, and its decimal digits.
bool is_big_integer(const Json& value);
const std::string big_integer_text(const Json& value);
// An integer of any size (not a boolean, not a number with a fraction or exponent).
bool is_integer(const Json& value);
// A JSON number with a fraction or an exponent, NaN or an infinity (Python's float).
bool is_float(const Json& value);
// An integer or a float, as a double (a big integer may become an infinity; comparisons stay right).
double to_double(const Json& value);

// Python's name of the value's type: "a boolean", "a string", "an integer", "a number", "a list", "an object",
// "null".
std::string type_name(const Json& value);
// Python's repr() of the value (strings quoted as Python quotes them, True, None, nan), cut at `limit` characters.
std::string repr(const Json& value, std::size_t limit = std::string::npos);
std::string repr_string(const std::string& text);
// Python's repr() of a float: the shortest text that reads back the same ("0.5", "1e+300", "nan", "inf").
std::string repr_float(double value);
// An integer with thousands separators, as Python's f"{n:,}".
std::string group_digits(long long value);
// JSON text of a value (big integers as their digits), compact.
std::string dump(const Json& value);

}  // namespace dgs::json
