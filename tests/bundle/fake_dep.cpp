// A library the bundle checker's self-test leaves out of a fake bundle.
int tessera_bundle_fake_dep() { return 0; }
