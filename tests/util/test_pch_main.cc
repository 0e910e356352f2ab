// The target that builds tests/util/test_pch.h's precompiled header for the
// gtest targets (tests/CMakeLists.txt). Never run.
int main() { return 0; }
