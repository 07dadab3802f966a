// Default sanitizer settings, compiled into every imcap executable built with IMCAP_SANITIZE
// (imcap_setup_target in imcap_helpers.cmake), so that ctest, the CLI the tests start and the
// fuzzers all run with them, with no environment to set. ASAN_OPTIONS, LSAN_OPTIONS and
// UBSAN_OPTIONS still override them. Every setting is explained in docs/reliability.md.
#define IMCAP_SANITIZER_HOOK extern "C" __attribute__((visibility("default"), used))

IMCAP_SANITIZER_HOOK const char* __asan_default_options() {
  return "detect_leaks=1:check_initialization_order=1:strict_init_order=1";
}

IMCAP_SANITIZER_HOOK const char* __ubsan_default_options() {
  return "print_stacktrace=1:halt_on_error=1";
}

IMCAP_SANITIZER_HOOK const char* __lsan_default_suppressions() { return ""; }
