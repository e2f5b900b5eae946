"""`cnlb`: thin commands that parse flags, call the library and print."""
