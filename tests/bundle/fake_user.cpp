// A binary needing libtessera_bundle_fake_dep.so (the checker's self-test).
int tessera_bundle_fake_dep();
int main() { return tessera_bundle_fake_dep(); }
