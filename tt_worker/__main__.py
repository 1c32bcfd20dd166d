from tt_worker.main import main

main()
