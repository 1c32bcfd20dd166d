from tt_server.main import main

main()
