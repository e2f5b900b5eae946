"""`cnlb`: thin commands that parse flags, call the library and print.

main      the entry: one command, errors turned into exit statuses
parser    the flags, one function per group of subcommands
commands  one function per subcommand
"""
