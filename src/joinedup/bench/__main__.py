from joinedup.bench.cli import main

main()
