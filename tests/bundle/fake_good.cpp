// A binary needing only libc and the C++ runtime (the checker's self-test).
#include <string>
int main(int argc, char**) { return static_cast<int>(std::to_string(argc).size()) - 1; }
