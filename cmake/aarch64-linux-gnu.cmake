# Cross-compiling for ARM64 Linux with Debian's toolchain (g++-aarch64-linux-gnu) and its
# multiarch libraries (the :arm64 -dev packages, installed beside the native ones).
# scripts/arm64.sh installs both and uses this file; the tests then run under qemu-aarch64.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# The arm64 libraries live in /usr/lib/aarch64-linux-gnu; headers are shared in /usr/include.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
# CTest (and gtest_discover_tests) run the test binary through the emulator, CPU "max" (every
# ARMv8/v9 extension qemu knows, SVE2 with 512-bit vectors by default in user mode; the kernel
# tests run the SVE2, SVE, NEON and EMU128 targets; scripts/arm64.sh tests other lengths).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-cpu;max;-L;/)
