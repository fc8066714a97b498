// The model file's metadata as the engine reads it: the JSON entry that vs_iedvr/model_file.py
// writes (`metadata_for`), parsed at its top level into typed fields and checked. Model files come
// from other people, so every field the engine relies on is validated here, with the field's name
// and value in the message.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

namespace model_metadata {

// The archive entry and format, as model_file.METADATA_ENTRY / FORMAT / FORMAT_VERSION.
constexpr const char* kEntry = "vs_iedvr.json";
constexpr const char* kFormat = "vs-iedvr-model";
constexpr int64_t kKnownFormatVersion = 1;

struct Metadata {
  int64_t format_version = 0;
  int scale = 0;
  int num_frames = 0;
  std::string weights_crc32;  // 8 lowercase hexadecimal digits: parse() refuses a file without
};

// A top-level value: a string's text, a number's or literal's spelling; nested objects and arrays
// are skipped (the engine reads none of their contents).
struct Value {
  enum class Kind { string, number, other } kind = Kind::other;
  std::string text;
};

class TopLevelParser {
 public:
  explicit TopLevelParser(const std::string& json) : json_(json) {}

  std::map<std::string, Value> parse() {
    std::map<std::string, Value> fields;
    skip_space();
    expect('{');
    skip_space();
    if (peek() == '}') return fields;
    while (true) {
      skip_space();
      const std::string key = string();
      skip_space();
      expect(':');
      skip_space();
      fields[key] = value();
      skip_space();
      if (peek() == ',') {
        ++position_;
        continue;
      }
      expect('}');
      return fields;
    }
  }

 private:
  char peek() const { return position_ < json_.size() ? json_[position_] : '\0'; }
  void expect(char c) {
    if (peek() != c) {
      throw std::runtime_error(std::string("its metadata is not valid JSON (expected '") + c +
                               "' at character " + std::to_string(position_) + ")");
    }
    ++position_;
  }
  void skip_space() {
    while (position_ < json_.size() && std::isspace(static_cast<unsigned char>(json_[position_]))) {
      ++position_;
    }
  }
  // Escapes are kept as written: the engine compares no string that holds one.
  std::string string() {
    expect('"');
    std::string text;
    while (position_ < json_.size() && json_[position_] != '"') {
      if (json_[position_] == '\\') text += json_[position_++];
      if (position_ < json_.size()) text += json_[position_++];
    }
    expect('"');
    return text;
  }
  void skip_nested() {
    int depth = 0;
    do {
      const char c = peek();
      if (c == '\0') expect('}');  // unterminated: reported as invalid JSON
      if (c == '"') {
        string();
        continue;
      }
      if (c == '{' || c == '[') ++depth;
      if (c == '}' || c == ']') --depth;
      ++position_;
    } while (depth > 0);
  }
  Value value() {
    const char c = peek();
    if (c == '"') return {Value::Kind::string, string()};
    if (c == '{' || c == '[') {
      skip_nested();
      return {};
    }
    const size_t start = position_;
    while (position_ < json_.size() && std::string(",}] \t\r\n").find(json_[position_]) == std::string::npos) {
      ++position_;
    }
    const std::string spelling = json_.substr(start, position_ - start);
    if (spelling.empty()) expect('"');  // no value at all
    const bool number = spelling.find_first_not_of("-+0123456789.eE") == std::string::npos;
    return {number ? Value::Kind::number : Value::Kind::other, spelling};
  }

  const std::string& json_;
  size_t position_ = 0;
};

// An integer field in [low, high], or an error naming the field and its value.
inline int64_t integer(const std::map<std::string, Value>& fields, const std::string& key,
                       int64_t low, int64_t high) {
  const auto found = fields.find(key);
  const bool is_integer = found != fields.end() && found->second.kind == Value::Kind::number &&
                          found->second.text.find_first_of(".eE") == std::string::npos;
  if (!is_integer) throw std::runtime_error("its metadata has no integer \"" + key + "\"");
  const std::string& digits = found->second.text;
  // More than 18 digits cannot be in any range we accept (and would overflow stoll).
  const int64_t value = digits.size() <= 18 ? std::stoll(digits) : high + 1;
  if (value < low || value > high) {
    throw std::runtime_error("its metadata field \"" + key + "\" is " + digits.substr(0, 24) +
                             (digits.size() > 24 ? "..." : "") + "; expected an integer from " +
                             std::to_string(low) + " to " + std::to_string(high));
  }
  return value;
}

inline Metadata parse(const std::string& json) {
  const auto fields = TopLevelParser(json).parse();
  const auto format = fields.find("format");
  if (format == fields.end() || format->second.text != kFormat) {
    throw std::runtime_error("it is not a vs-iedvr model file (its metadata's format is not \"" +
                             std::string(kFormat) + "\"); export one with `vs-iedvr export`");
  }
  Metadata metadata;
  metadata.format_version = integer(fields, "format_version", 1, int64_t{1} << 30);
  if (metadata.format_version > kKnownFormatVersion) {
    throw std::runtime_error("it has format version " + std::to_string(metadata.format_version) +
                             "; this vs-iedvr reads up to " + std::to_string(kKnownFormatVersion) +
                             ": upgrade vs-iedvr");
  }
  metadata.scale = static_cast<int>(integer(fields, "scale", 1, 8));
  metadata.num_frames = static_cast<int>(integer(fields, "num_frames", 1, 15));
  if (metadata.num_frames % 2 == 0) {
    throw std::runtime_error("its metadata field \"num_frames\" is " +
                             std::to_string(metadata.num_frames) +
                             "; expected an odd number (the centre frame and as many on each side)");
  }
  // Required, as model_file.check_fields requires it: a file without it, or with another type,
  // would load unchecked (an integer did, and a missing one with a flipped weight bit).
  const auto checksum = fields.find("weights_crc32");
  const bool missing = checksum == fields.end() || checksum->second.text == "null";
  const bool well_formed = !missing && checksum->second.kind == Value::Kind::string &&
                           checksum->second.text.size() == 8 &&
                           checksum->second.text.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!well_formed) {
    const std::string found =
        missing ? "missing"
        : checksum->second.kind == Value::Kind::string ? "\"" + checksum->second.text.substr(0, 24) + "\""
        : checksum->second.text.empty() ? "an array or object"
                                         : checksum->second.text.substr(0, 24);
    throw std::runtime_error("its metadata field \"weights_crc32\" is " + found +
                             "; expected the weights' CRC-32 as 8 hexadecimal digits, as "
                             "`vs-iedvr export` writes it: export the model again");
  }
  metadata.weights_crc32 = checksum->second.text;
  return metadata;
}

}  // namespace model_metadata
