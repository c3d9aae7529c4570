from ollamamax.cli import main

main()
