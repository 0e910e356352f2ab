// IPCRPC_TEST_SANITIZED: defined (as 1) when this file is compiled with
// AddressSanitizer or ThreadSanitizer, by either compiler: g++ defines
// __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__, clang only answers
// __has_feature. Tests use it to scale their time bounds, and to skip what
// the sanitizers' runtimes cannot survive.
#ifndef IPCRPC_TESTS_UTIL_SANITIZERS_H_
#define IPCRPC_TESTS_UTIL_SANITIZERS_H_

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define IPCRPC_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define IPCRPC_TEST_SANITIZED 1
#endif
#endif

#endif  // IPCRPC_TESTS_UTIL_SANITIZERS_H_
