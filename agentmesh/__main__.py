from agentmesh.cli import main

main()
