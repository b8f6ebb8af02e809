# ctest entry: build and run a small application against the installed package (find_package).
if(TURBOESM_WITH_TORCH)
  add_test(NAME installed_package_consumer
    COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR} -DWORK_DIR=${TURBOESM_TEST_WORK_DIR}/consumer
            -DSOURCE_DIR=${PROJECT_SOURCE_DIR} "-DPREFIX_PATH=${CMAKE_PREFIX_PATH}"
            -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/run.cmake)
  set_tests_properties(installed_package_consumer PROPERTIES LABELS package TIMEOUT 600 RUN_SERIAL ON)
endif()
