// libtrident.so (target trident_shared) is the static layers linked whole; this file only
// gives the target a source of its own. See src/CMakeLists.txt.
