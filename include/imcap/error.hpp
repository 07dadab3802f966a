// Exceptions thrown by imcap. Every message names the file, key or value at fault and what
// was expected, e.g. "annotations.json: annotations[17].caption: expected a string, got null".
#pragma once

#include <stdexcept>
#include <string>

namespace imcap {

/// Base class of every exception imcap throws on bad input or failed I/O.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A file could not be opened, read, written or renamed.
class IoError : public Error {
 public:
  using Error::Error;
};

/// A file or buffer was read but its content is malformed (bad JSON, truncated image, bad header).
class FormatError : public Error {
 public:
  using Error::Error;
};

/// A value given by the caller is out of range or inconsistent (bad option, unknown id, bad shape).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// A file asks for something imcap refuses on principle (e.g. a pickle global outside the
/// allowlist).
class SecurityError : public FormatError {
 public:
  using FormatError::FormatError;
};

}  // namespace imcap
