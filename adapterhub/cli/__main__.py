from adapterhub.cli import main

main()
