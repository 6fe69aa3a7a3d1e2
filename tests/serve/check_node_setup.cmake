# CTest fixture for the serve end-to-end suite: node and tests/serve/node_modules/openai present.
if(NOT NODE)
  message(FATAL_ERROR "node was not found: install the Debian packages nodejs and npm (scripts/setup does)")
endif()
if(NOT EXISTS "${DIR}/node_modules/openai/package.json")
  message(FATAL_ERROR "the openai npm package is not installed: run 'npm ci' in ${DIR} (scripts/setup does)")
endif()
