from nubis.cli.main import main

main()
