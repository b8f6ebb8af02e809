# ctest entries for turboesm-quantstat: the JSON contract of issue 4 and a bad-input error.
if(TURBOESM_BUILD_TOOLS AND TARGET turboesm-quantstat)
  add_test(NAME quantstat_json_contract
    COMMAND ${CMAKE_COMMAND} -DQUANTSTAT=$<TARGET_FILE:turboesm-quantstat>
            -P ${CMAKE_CURRENT_SOURCE_DIR}/programs/quantstat_check.cmake)
  set_tests_properties(quantstat_json_contract PROPERTIES LABELS programs)
endif()
