// The rows of dgs-detect, written as dgs_sdk.results writes CSV: Python's float repr, formula neutralisation,
// the csv module's quoting.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace dgs_detect {

// Python's repr of a float: the shortest digits that read back to it, in exponent form below 1e-4 and from 1e16.
inline std::string python_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof buffer, x, std::chars_format::scientific);
  std::string text(buffer, result.ptr);  // [-]d[.ddd]e(+|-)XX
  std::string sign = text[0] == '-' ? "-" : "";
  if (!sign.empty()) text.erase(0, 1);
  std::size_t e = text.find('e');
  int exponent = std::atoi(text.c_str() + e + 1);
  std::string digits;
  for (std::size_t i = 0; i < e; ++i) {
    if (text[i] != '.') digits += text[i];
  }
  int point = exponent + 1;  // digits are 0.d1d2... x 10^point
  std::string out;
  if (point > -4 && point <= 16) {
    if (point <= 0) {
      out = "0." + std::string(static_cast<std::size_t>(-point), '0') + digits;
    } else if (static_cast<std::size_t>(point) >= digits.size()) {
      out = digits + std::string(point - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, point) + "." + digits.substr(point);
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char tail[16];
    std::snprintf(tail, sizeof tail, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += tail;
  }
  return sign + out;
}

// A cell a spreadsheet shows as text (dgs_sdk.results.neutralise), then quoted as Python's csv module does.
inline std::string csv_cell(const std::string& value) {
  static const std::string formula_starts = "=+-@\t\r'";
  std::string cell = !value.empty() && formula_starts.find(value[0]) != std::string::npos ? "'" + value : value;
  if (cell.find_first_of(",\"\r\n") == std::string::npos) return cell;
  std::string quoted = "\"";
  for (char c : cell) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

inline std::string csv_line(const std::vector<std::string>& cells) {
  std::string line;
  for (std::size_t i = 0; i < cells.size(); ++i) line += (i ? "," : "") + csv_cell(cells[i]);
  return line + "\r\n";
}

}  // namespace dgs_detect
