from stack.services import main

main()
