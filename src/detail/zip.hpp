// A minimal reader for the uncompressed ("stored") zip archives that torch.save writes
// (private). Every offset and size is checked against the archive's length.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace imcap::detail {

/// The entries of a zip archive held in memory, as views into it.
class ZipArchive {
 public:
  /// Parses the central directory of `data` (which must outlive the archive). `name` prefixes
  /// error messages. Throws FormatError on anything malformed, on compressed or encrypted
  /// entries and on duplicate names. Checks each entry's CRC-32 when verify_crc.
  ZipArchive(std::string_view data, std::string name, bool verify_crc = true);

  /// Entry names in central-directory order.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& entry) const { return entries_.count(entry) != 0; }
  /// The bytes of an entry. Throws FormatError naming the archive and entry when absent.
  std::string_view at(const std::string& entry) const;

 private:
  std::string name_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, std::string_view> entries_;
};

/// Whether data starts like a zip archive (a local file header).
bool looks_like_zip(std::string_view data);

/// CRC-32 (the zip / PNG polynomial).
std::uint32_t crc32(std::string_view data);

}  // namespace imcap::detail
