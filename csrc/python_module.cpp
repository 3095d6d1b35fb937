// An empty Python module, so that `import se_kernels._C` loads this library and runs the op
// registrations (csrc/ops.cpp and the kernels' TORCH_LIBRARY_IMPL blocks) without pybind11.
// The library uses no other Python API, so one build serves every Python >= 3.9 (abi3).
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
