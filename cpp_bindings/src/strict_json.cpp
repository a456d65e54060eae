#include "strict_json.hpp"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <vector>

namespace dgs::json {
namespace {

// Subtype of the binary value that holds an integer beyond 64 bits (its decimal digits).
constexpr std::uint64_t big_integer_subtype = 0x6269;

// Python decodes the bytes as UTF-8 before parsing: overlong forms, surrogates and code points past U+10FFFF are
// refused, with the reason and offset its decoder gives.
void check_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int length = 0;
    unsigned char low = 0x80, high = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) low = 0xA0;
      if (c == 0xED) high = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) low = 0x90;
      if (c == 0xF4) high = 0x8F;
    } else {
      throw Invalid("not UTF-8 (invalid start byte at byte " + std::to_string(i) + ")");
    }
    for (int k = 1; k < length; ++k) {
      if (i + k >= n) throw Invalid("not UTF-8 (unexpected end of data at byte " + std::to_string(i) + ")");
      unsigned char next = s[i + k];
      bool ok = k == 1 ? (next >= low && next <= high) : (next >= 0x80 && next <= 0xBF);
      if (!ok) throw Invalid("not UTF-8 (invalid continuation byte at byte " + std::to_string(i) + ")");
    }
    i += length;
  }
}

// What a number token is when nlohmann cannot hold it: Python's NaN and infinities, floats beyond the double
// range (Python reads them as infinities) and integers beyond 64 bits.
struct Special {
  bool big_integer = false;
  double value = 0.0;
  std::string text;
};

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Whether `token` is a JSON number (Python's NUMBER_RE, matched whole), and whether it has a fraction or exponent.
bool json_number(const std::string& token, bool& is_float_token) {
  std::size_t i = 0, n = token.size();
  if (i < n && token[i] == '-') ++i;
  if (i >= n) return false;
  if (token[i] == '0') {
    ++i;
  } else if (is_digit(token[i])) {
    while (i < n && is_digit(token[i])) ++i;
  } else {
    return false;
  }
  is_float_token = false;
  if (i < n && token[i] == '.') {
    ++i;
    if (i >= n || !is_digit(token[i])) return false;
    while (i < n && is_digit(token[i])) ++i;
    is_float_token = true;
  }
  if (i < n && (token[i] == 'e' || token[i] == 'E')) {
    ++i;
    if (i < n && (token[i] == '+' || token[i] == '-')) ++i;
    if (i >= n || !is_digit(token[i])) return false;
    while (i < n && is_digit(token[i])) ++i;
    is_float_token = true;
  }
  return i == n;
}

// Python's int() refuses to convert more digits than this (sys.get_int_max_str_digits(), 4300 by default since
// 3.11, 3.10.7 and 3.9.14), so its json module refuses such a document: so does this parser.
constexpr std::size_t max_integer_digits = 4300;

bool fits_64_bits(const std::string& digits) {
  errno = 0;
  char* end = nullptr;
  if (digits[0] == '-') {
    (void)std::strtoll(digits.c_str(), &end, 10);
  } else {
    (void)std::strtoull(digits.c_str(), &end, 10);
  }
  return errno != ERANGE;
}

// Rewrites the tokens nlohmann cannot read into 0 and records them by their index among all number tokens, so
// the SAX handler puts the real value in their place.
std::string substitute_specials(const std::string& text, std::map<std::size_t, Special>& specials) {
  std::string out;
  out.reserve(text.size());
  std::size_t numbers = 0, n = text.size();
  bool in_string = false;
  for (std::size_t i = 0; i < n;) {
    char c = text[i];
    if (in_string) {
      if (c == '\\' && i + 1 < n) {
        out.append(text, i, 2);
        i += 2;
        continue;
      }
      if (c == '"') in_string = false;
      out.push_back(c);
      ++i;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out.push_back(c);
      ++i;
      continue;
    }
    auto literal = [&](const char* word, double value) {
      std::size_t length = std::char_traits<char>::length(word);
      if (text.compare(i, length, word) != 0) return false;
      specials[numbers++] = Special{false, value, word};
      out.push_back('0');
      i += length;
      return true;
    };
    constexpr double infinity = std::numeric_limits<double>::infinity();
    if (literal("NaN", std::numeric_limits<double>::quiet_NaN()) || literal("Infinity", infinity) ||
        literal("-Infinity", -infinity)) {
      continue;
    }
    if (c == '-' || is_digit(c)) {
      std::size_t j = i;
      while (j < n && (is_digit(text[j]) || text[j] == '-' || text[j] == '+' || text[j] == '.' || text[j] == 'e' ||
                       text[j] == 'E')) {
        ++j;
      }
      std::string token = text.substr(i, j - i);
      bool is_float_token = false;
      if (json_number(token, is_float_token)) {
        const std::size_t digits = token.size() - (token[0] == '-' ? 1 : 0);
        if (!is_float_token && digits > max_integer_digits) {
          throw Invalid("Exceeds the limit (" + std::to_string(max_integer_digits) + " digits) for integer string "
                        "conversion: value has " + std::to_string(digits) +
                        " digits; use sys.set_int_max_str_digits() to increase the limit");
        }
        if (!is_float_token && !fits_64_bits(token)) {
          specials[numbers] = Special{true, std::strtod(token.c_str(), nullptr), token};
          token = "0";
        } else if (is_float_token) {
          double value = std::strtod(token.c_str(), nullptr);
          if (!std::isfinite(value)) {
            specials[numbers] = Special{false, value, token};
            token = "0";
          }
        }
        ++numbers;
      }
      out += token;  // a malformed token goes on as it is, for the parser to refuse
      i = j;
      continue;
    }
    out.push_back(c);
    ++i;
  }
  return out;
}

// Builds the document, refusing duplicate keys (in any object, when it closes, as Python's object_pairs_hook
// does) and nesting beyond max_depth.
class Builder : public nlohmann::json_sax<Json> {
 public:
  explicit Builder(const std::map<std::size_t, Special>& specials) : specials_(specials) {}

  Json root;
  std::string error;

  bool null() override { return put(Json(nullptr)); }
  bool boolean(bool value) override { return put(Json(value)); }
  bool number_integer(number_integer_t value) override { return number(Json(value)); }
  bool number_unsigned(number_unsigned_t value) override { return number(Json(value)); }
  bool number_float(number_float_t value, const string_t&) override { return number(Json(value)); }
  bool string(string_t& value) override { return put(Json(std::move(value))); }
  bool binary(binary_t&) override { return false; }  // no JSON text holds one

  bool start_object(std::size_t) override { return open(Json::object(), true); }
  bool key(string_t& key) override {
    Frame& frame = frames_.back();
    if (!frame.keys.insert(key).second) frame.duplicates.insert(key);
    frame.key = key;
    return true;
  }
  bool end_object() override {
    const std::set<std::string>& duplicates = frames_.back().duplicates;
    if (!duplicates.empty()) {
      error = "duplicate keys [";
      bool first = true;
      for (const auto& key : duplicates) {
        error += (first ? "" : ", ") + repr_string(key);
        first = false;
      }
      error += "]";
      return false;
    }
    frames_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return open(Json::array(), false); }
  bool end_array() override {
    frames_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    if (error.empty()) error = e.what();
    return false;
  }

 private:
  struct Frame {
    Json* value;
    bool object;
    std::string key;
    std::set<std::string> keys, duplicates;
  };

  bool number(Json value) {
    auto special = specials_.find(numbers_++);
    if (special == specials_.end()) return put(std::move(value));
    if (special->second.big_integer) {
      const std::string& text = special->second.text;
      return put(Json::binary(std::vector<std::uint8_t>(text.begin(), text.end()), big_integer_subtype));
    }
    return put(Json(special->second.value));
  }

  Json* put(Json value) {
    if (frames_.empty()) {
      root = std::move(value);
      return &root;
    }
    Frame& frame = frames_.back();
    if (frame.object) {
      // A duplicate key keeps its first place; the document is refused when the object closes anyway.
      Json& slot = (*frame.value)[frame.key];
      slot = std::move(value);
      return &slot;
    }
    frame.value->push_back(std::move(value));
    return &frame.value->back();
  }

  bool open(Json container, bool object) {
    if (static_cast<int>(frames_.size()) >= max_depth) {
      error = "nested too deeply";
      return false;
    }
    Json* value = put(std::move(container));
    frames_.push_back(Frame{value, object, {}, {}, {}});
    return true;
  }

  const std::map<std::size_t, Special>& specials_;
  std::vector<Frame> frames_;
  std::size_t numbers_ = 0;
};

// The index of the code point boundary at or before `limit` code points.
std::string cut(const std::string& text, std::size_t limit) {
  if (limit == std::string::npos) return text;
  std::size_t points = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      if (points == limit) return text.substr(0, i);
      ++points;
    }
  }
  return text;
}

}  // namespace

Json parse(const std::string& text) {
  check_utf8(text);
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) {
    throw Invalid("Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)");
  }
  std::map<std::size_t, Special> specials;
  std::string rewritten = substitute_specials(text, specials);
  Builder builder(specials);
  bool ok = Json::sax_parse(rewritten, &builder, nlohmann::detail::input_format_t::json, true, false);
  if (!ok) throw Invalid(builder.error.empty() ? std::string("not valid JSON") : builder.error);
  return std::move(builder.root);
}

bool is_big_integer(const Json& value) {
  return value.is_binary() && value.get_binary().has_subtype() &&
         value.get_binary().subtype() == big_integer_subtype;
}

const std::string big_integer_text(const Json& value) {
  const auto& bytes = value.get_binary();
  return std::string(bytes.begin(), bytes.end());
}

bool is_integer(const Json& value) { return value.is_number_integer() || is_big_integer(value); }

bool is_float(const Json& value) { return value.is_number_float(); }

double to_double(const Json& value) {
  if (is_big_integer(value)) return std::strtod(big_integer_text(value).c_str(), nullptr);
  return value.get<double>();
}

std::string type_name(const Json& value) {
  if (value.is_boolean()) return "a boolean";
  if (value.is_string()) return "a string";
  if (is_integer(value)) return "an integer";
  if (value.is_number_float()) return "a number";
  if (value.is_array()) return "a list";
  if (value.is_object()) return "an object";
  return "null";
}

std::string repr_string(const std::string& text) {
  bool has_single = text.find('\'') != std::string::npos, has_double = text.find('"') != std::string::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (ch == quote || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\r') {
      out += "\\r";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    } else {
      out += ch;
    }
  }
  out += quote;
  return out;
}

std::string repr_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  // The shortest significand that reads back as the same double.
  char buffer[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*e", precision - 1, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  std::string text = buffer;
  bool negative = text[0] == '-';
  if (negative) text.erase(0, 1);
  std::size_t e = text.find('e');
  int exponent = std::atoi(text.c_str() + e + 1);
  std::string digits = text.substr(0, e);
  if (digits.size() > 1) digits.erase(1, 1);  // the point
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out;
  if (exponent >= -4 && exponent < 16) {
    if (exponent >= 0) {
      std::string integer = digits.substr(0, std::min<std::size_t>(digits.size(), exponent + 1));
      integer.append(exponent + 1 - integer.size(), '0');
      std::string fraction = digits.size() > static_cast<std::size_t>(exponent + 1) ? digits.substr(exponent + 1) : "0";
      out = integer + "." + fraction;
    } else {
      out = "0." + std::string(-exponent - 1, '0') + digits;
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  }
  return (negative ? "-" : "") + out;
}

std::string repr(const Json& value, std::size_t limit) {
  std::string out;
  if (value.is_null()) {
    out = "None";
  } else if (value.is_boolean()) {
    out = value.get<bool>() ? "True" : "False";
  } else if (is_big_integer(value)) {
    out = big_integer_text(value);
  } else if (value.is_number_integer()) {
    out = value.dump();
  } else if (value.is_number_float()) {
    out = repr_float(value.get<double>());
  } else if (value.is_string()) {
    out = repr_string(value.get<std::string>());
  } else if (value.is_array()) {
    out = "[";
    for (std::size_t i = 0; i < value.size(); ++i) out += (i ? ", " : "") + repr(value[i]);
    out += "]";
  } else if (value.is_object()) {
    out = "{";
    bool first = true;
    for (const auto& [key, item] : value.items()) {
      out += (first ? "" : ", ") + repr_string(key) + ": " + repr(item);
      first = false;
    }
    out += "}";
  }
  return cut(out, limit);
}

std::string group_digits(long long value) {
  std::string digits = std::to_string(value < 0 ? -static_cast<unsigned long long>(value)
                                                : static_cast<unsigned long long>(value));
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (value < 0 ? "-" : "") + out;
}

std::string dump(const Json& value) {
  if (is_big_integer(value)) return big_integer_text(value);
  if (value.is_array()) {
    std::string out = "[";
    for (std::size_t i = 0; i < value.size(); ++i) out += (i ? "," : "") + dump(value[i]);
    return out + "]";
  }
  if (value.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [key, item] : value.items()) {
      out += (first ? "" : ",") + Json(key).dump() + ":" + dump(item);
      first = false;
    }
    return out + "}";
  }
  return value.dump();
}

}  // namespace dgs::json
