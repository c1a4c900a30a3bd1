from kvmigrate.launch import main

main()
